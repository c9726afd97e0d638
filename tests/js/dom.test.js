"use strict";
// applyBadges / applySummary on a jsdom copy of the gradio 3.41 gallery markup (grid view; preview + strip).

const test = require("node:test");
const assert = require("node:assert/strict");
const {
    makePage, renderGallery, selectInGallery, makeInfo, recordMutations, layOutThumbnails, FOUR, SCRIPT_PATH,
} = require("./helpers");

const ir = require(SCRIPT_PATH);
const MINUS = "\u2212";
const STAR = "\u2605";

function badgeOf(host) {
    return Array.from(host.children).find((c) => c.classList.contains("imagereward-badge")) || null;
}

function visibleText(badge) {
    // what is drawn: everything but the screen-reader span
    return Array.from(badge.children).filter((c) => !c.classList.contains("imagereward-sr")).map((c) => c.textContent).join("");
}

function setup({ count, selected = null, info }) {
    const page = makePage();
    const gallery = page.gallery();
    renderGallery(gallery, { count, selected });
    const parsed = info === null ? null : ir.parseGenerationInfo(JSON.stringify(info));
    return { page, gallery, parsed };
}

test("grid view: one badge per scored thumbnail, none on the grid image", () => {
    // 5 gallery items: the grid image at 0, then four images
    const { gallery, parsed } = setup({ count: 5, info: makeInfo({ images: FOUR, grid: true }) });
    const result = ir.applyBadges(gallery, parsed);
    assert.equal(result.badges, 4);
    const thumbs = gallery.querySelectorAll(".grid-wrap .thumbnail-item");
    assert.equal(badgeOf(thumbs[0]), null, "no badge on the grid image");
    assert.equal(visibleText(badgeOf(thumbs[1])), `${STAR}0.812`);
    assert.equal(visibleText(badgeOf(thumbs[2])), `${MINUS}0.422`);
    assert.equal(visibleText(badgeOf(thumbs[3])), `${STAR}1.950`);
    assert.equal(visibleText(badgeOf(thumbs[4])), `${MINUS}2.500`);
    assert.equal(gallery.querySelectorAll(".imagereward-badge").length, 4);
    assert.equal(gallery.querySelector(".preview"), null);
});

test("badge content: best marker with text alternative, tooltip, fixed-scale colour, namespaced", () => {
    const { gallery, parsed } = setup({ count: 4, info: makeInfo({ images: FOUR }) });
    ir.applyBadges(gallery, parsed);
    const thumbs = gallery.querySelectorAll(".grid-wrap .thumbnail-item");
    const best = badgeOf(thumbs[0]);
    const other = badgeOf(thumbs[1]);

    assert.ok(best.classList.contains("imagereward-badge--best"));
    assert.ok(!other.classList.contains("imagereward-badge--best"));
    assert.equal(best.querySelector(".imagereward-badge__star").textContent, STAR);
    assert.equal(best.querySelector(".imagereward-badge__star").getAttribute("aria-hidden"), "true");
    assert.equal(other.querySelector(".imagereward-badge__star"), null);

    assert.equal(best.title, "ImageReward score 0.812 \u2014 rank 1 of 4 in its group \u2014 best");
    assert.equal(other.title, `ImageReward score ${MINUS}0.422 \u2014 rank 3 of 4 in its group`);
    assert.equal(best.querySelector(".imagereward-sr").textContent, best.title, "text alternative for the star and colour");

    // the thumbnail button keeps its own label and gets the badge as its description
    assert.equal(thumbs[0].getAttribute("aria-label"), "Thumbnail 1 of 4");
    assert.equal(thumbs[0].getAttribute("aria-describedby"), best.id);
    assert.ok(best.id.startsWith("imagereward-"));

    assert.equal(best.style.getPropertyValue("--imagereward-color"), ir.scoreColor(0.8123));
    assert.equal(badgeOf(thumbs[3]).style.getPropertyValue("--imagereward-color"), ir.scoreColor(-2), "clamped to red");

    for (const node of gallery.querySelectorAll(".imagereward-badge, .imagereward-badge *")) {
        for (const cls of node.classList) assert.ok(cls.startsWith("imagereward-"), cls);
    }
    // the thumbnails' own classes are untouched
    assert.equal(thumbs[0].className, "thumbnail-item thumbnail-lg svelte-1b19cri");
});

test("preview + strip: strip thumbnails and the large preview follow the selected image", () => {
    const { gallery, parsed } = setup({ count: 5, selected: 2, info: makeInfo({ images: FOUR, grid: true }) });
    const result = ir.applyBadges(gallery, parsed);
    assert.equal(result.badges, 4 + 4 + 1, "grid, strip and preview");

    const strip = gallery.querySelectorAll(".thumbnails .thumbnail-item");
    assert.equal(badgeOf(strip[0]), null);
    assert.equal(visibleText(badgeOf(strip[2])), `${MINUS}.422`); // the strip drops the leading zero
    assert.ok(badgeOf(strip[2]).classList.contains("imagereward-badge--small"));
    assert.ok(badgeOf(strip[1]).classList.contains("imagereward-badge--best"));

    const preview = gallery.querySelector(".preview");
    const big = badgeOf(preview);
    assert.ok(big.classList.contains("imagereward-badge--preview"));
    assert.equal(visibleText(big), `${MINUS}0.422 \u00b7 rank 3/4`);
    assert.equal(big.title, `ImageReward score ${MINUS}0.422 \u2014 rank 3 of 4 in its group`);
    assert.equal(preview.getAttribute("aria-describedby"), null, "the preview button has no label to keep");

    // select the best image of the second group
    selectInGallery(gallery, 3);
    ir.applyBadges(gallery, parsed);
    assert.equal(visibleText(badgeOf(preview)), `${STAR}1.950 \u00b7 rank 1/4`);
    assert.equal(gallery.querySelectorAll(".preview > .imagereward-badge").length, 1);

    // select the grid image: the preview badge goes away
    selectInGallery(gallery, 0);
    ir.applyBadges(gallery, parsed);
    assert.equal(badgeOf(preview), null);
    assert.equal(gallery.querySelectorAll(".imagereward-badge").length, 8);
});

test("idempotent: a second run neither duplicates nor touches the DOM", async () => {
    const { page, gallery, parsed } = setup({ count: 5, selected: 1, info: makeInfo({ images: FOUR, grid: true }) });
    ir.applyBadges(gallery, parsed);
    ir.applySummary(gallery, parsed);
    const html = gallery.parentNode.innerHTML;
    const recorder = recordMutations(page.window, gallery.parentNode);
    const again = ir.applyBadges(gallery, parsed);
    const summaryChanged = ir.applySummary(gallery, parsed);
    const records = await recorder.stop();
    assert.equal(again.changed, 0);
    assert.equal(summaryChanged, false);
    assert.equal(records.length, 0, "no mutation on the second run");
    assert.equal(gallery.parentNode.innerHTML, html);
    assert.equal(gallery.querySelectorAll(".imagereward-badge").length, 9);
});

test("switching grid view <-> preview recomputes badges for the new elements", () => {
    const page = makePage();
    const gallery = page.gallery();
    const parsed = ir.parseGenerationInfo(makeInfo({ images: FOUR }));
    renderGallery(gallery, { count: 4, selected: null });
    assert.equal(ir.applyBadges(gallery, parsed).badges, 4);
    renderGallery(gallery, { count: 4, selected: 0 }); // gradio re-renders: fresh elements without badges
    assert.equal(gallery.querySelectorAll(".imagereward-badge").length, 0);
    assert.equal(ir.applyBadges(gallery, parsed).badges, 9);
    assert.equal(gallery.querySelectorAll(".thumbnail-item > .imagereward-badge").length, 8);
});

test("a new job without scores removes every badge, description link and the summary", async () => {
    const { page, gallery, parsed } = setup({ count: 5, selected: 1, info: makeInfo({ images: FOUR, grid: true }) });
    // a thumbnail that already had a description of its own keeps it
    const first = gallery.querySelector(".grid-wrap .thumbnail-item:nth-child(2)");
    first.setAttribute("aria-describedby", "someone-else");
    ir.applyBadges(gallery, parsed);
    ir.applySummary(gallery, parsed);
    assert.equal(first.getAttribute("aria-describedby").split(" ").length, 2);
    assert.ok(gallery.nextElementSibling.classList.contains("imagereward-summary"));

    const plain = ir.parseGenerationInfo(JSON.stringify(makeInfo({ images: FOUR, details: false, infotextScores: false })));
    assert.equal(plain, null);
    const removed = ir.applyBadges(gallery, plain);
    assert.ok(removed.changed > 0);
    assert.equal(ir.applySummary(gallery, plain), true);
    assert.equal(gallery.parentNode.querySelectorAll(".imagereward-badge, .imagereward-summary").length, 0);
    assert.equal(first.getAttribute("aria-describedby"), "someone-else");
    assert.equal(gallery.querySelectorAll("[aria-describedby^=imagereward-]").length, 0);

    // and removing again is a no-op
    const recorder = recordMutations(page.window, gallery.parentNode);
    assert.equal(ir.clearOverlays(gallery), 0);
    assert.equal((await recorder.stop()).length, 0);
});

test("a job with fewer scored images drops the badges that no longer apply", () => {
    const { gallery, parsed } = setup({ count: 4, info: makeInfo({ images: FOUR }) });
    ir.applyBadges(gallery, parsed);
    const two = ir.parseGenerationInfo(makeInfo({ images: FOUR.slice(0, 2) }));
    ir.applyBadges(gallery, two);
    const thumbs = gallery.querySelectorAll(".grid-wrap .thumbnail-item");
    assert.ok(badgeOf(thumbs[0]) && badgeOf(thumbs[1]));
    assert.equal(badgeOf(thumbs[2]), null);
    assert.equal(badgeOf(thumbs[3]), null);
    assert.equal(thumbs[3].hasAttribute("aria-describedby"), false);
});

test("scores changing for the same elements update the badge in place", () => {
    const { gallery, parsed } = setup({ count: 4, info: makeInfo({ images: FOUR }) });
    ir.applyBadges(gallery, parsed);
    const thumb = gallery.querySelector(".grid-wrap .thumbnail-item");
    const badge = badgeOf(thumb);
    const next = ir.parseGenerationInfo(makeInfo({ images: [{ score: -1.5, rank: 2, groupSize: 2 }, ...FOUR.slice(1)] }));
    const result = ir.applyBadges(gallery, next);
    assert.equal(result.changed, 1);
    assert.equal(badgeOf(thumb), badge, "same element, updated");
    assert.equal(visibleText(badge), `${MINUS}1.500`);
    assert.ok(!badge.classList.contains("imagereward-badge--best"));
    assert.equal(badge.querySelectorAll(".imagereward-badge__score").length, 1);
});

test("setting off: no badge and no summary are added, existing ones are removed", async () => {
    const { page, gallery, parsed } = setup({ count: 5, selected: 2, info: makeInfo({ images: FOUR, grid: true }) });
    const html = gallery.parentNode.innerHTML;
    const recorder = recordMutations(page.window, gallery.parentNode);
    assert.equal(ir.applyBadges(gallery, parsed, { enabled: false }).badges, 0);
    assert.equal(ir.applySummary(gallery, parsed, { enabled: false }), false);
    assert.equal((await recorder.stop()).length, 0, "no DOM change at all");
    assert.equal(gallery.parentNode.innerHTML, html);

    ir.applyBadges(gallery, parsed);
    ir.applySummary(gallery, parsed);
    ir.applyBadges(gallery, parsed, { enabled: false });
    ir.applySummary(gallery, parsed, { enabled: false });
    assert.equal(gallery.parentNode.innerHTML, html, "back to the untouched markup");
});

test("summary: just below the gallery, only for jobs with details, fallback flagged", () => {
    const info = makeInfo({ images: FOUR, grid: true });
    const { gallery, parsed } = setup({ count: 5, info });
    assert.equal(ir.applySummary(gallery, parsed), true);
    const summary = gallery.nextElementSibling;
    assert.ok(summary.classList.contains("imagereward-summary"));
    assert.equal(summary.textContent, `ImageReward: 16 candidates scored, 4 kept, 12 discarded \u00b7 scores ${MINUS}1.23 \u2026 1.95`);
    assert.equal(summary.getAttribute("role"), "status");
    assert.equal(summary.parentNode.id, "txt2img_gallery_container");

    const fallbackInfo = makeInfo({
        images: [{ score: -1.7, rank: 1, groupSize: 4 }],
        summary: { scored: 4, kept: 1, discarded: 3, min: -2.2, max: -1.7, mode: "threshold", threshold: 0.2, fallback: true },
    });
    ir.applySummary(gallery, ir.parseGenerationInfo(fallbackInfo));
    assert.equal(gallery.parentNode.querySelectorAll(".imagereward-summary").length, 1);
    assert.ok(summary.classList.contains("imagereward-summary--fallback"));
    assert.match(summary.textContent, /no candidate reached the threshold \(0\.20\), so the best was kept anyway$/);

    // infotext-only data: badges yes, summary no
    const onlyInfotext = ir.parseGenerationInfo(makeInfo({ images: FOUR, details: false }));
    assert.equal(ir.applySummary(gallery, onlyInfotext), true);
    assert.equal(gallery.parentNode.querySelector(".imagereward-summary"), null);
    assert.equal(ir.applyBadges(gallery, onlyInfotext).badges, 4);
    assert.equal(gallery.querySelectorAll(".imagereward-badge--best").length, 0, "no rank known: no best marker");
});

test("a group of one gets no star (nothing was compared)", () => {
    const info = makeInfo({ images: [{ score: 0.3, rank: 1, groupSize: 1 }, { score: 0.1, rank: 1, groupSize: 1 }] });
    const { gallery } = setup({ count: 2, info });
    ir.applyBadges(gallery, ir.parseGenerationInfo(info));
    assert.equal(gallery.querySelectorAll(".imagereward-badge").length, 2);
    assert.equal(gallery.querySelectorAll(".imagereward-badge--best, .imagereward-badge__star").length, 0);
});

test("more thumbnails than scores (extra images without infotext): extras stay bare", () => {
    const { gallery, parsed } = setup({ count: 6, info: makeInfo({ images: FOUR }) });
    assert.equal(ir.applyBadges(gallery, parsed).badges, 4);
    const thumbs = gallery.querySelectorAll(".grid-wrap .thumbnail-item");
    assert.equal(badgeOf(thumbs[4]), null);
    assert.equal(badgeOf(thumbs[5]), null);
});

test("robust against odd input: missing gallery, empty gallery, gradio-like elements we did not make", () => {
    assert.deepEqual(ir.applyBadges(null, null), { badges: 0, changed: 0 });
    assert.equal(ir.applySummary(null, null), false);
    const { gallery, parsed } = setup({ count: 0, info: makeInfo({ images: FOUR }) });
    assert.equal(ir.applyBadges(gallery, parsed).badges, 0);
});

// ---------------------------------------------------------------------------------------------------------------
// Scorers other than ImageReward
// ---------------------------------------------------------------------------------------------------------------

const DASH = "\u2014";
const PICK = [
    { score: 26.1638, rank: 1, groupSize: 4, group: 0 },
    { score: 21.6517, rank: 4, groupSize: 4, group: 0 },
];
const PICK_SUMMARY = { scored: 16, kept: 2, discarded: 14, min: 17.5, max: 26.1638, mode: "top-k", threshold: null, fallback: false,
    scorer: "pickscore", score_key: "PickScore" };

test("a PickScore job: badges with its digits and colour range, tooltip and summary name it", () => {
    const info = makeInfo({ images: PICK, scorer: "PickScore", summary: PICK_SUMMARY });
    const { gallery, parsed } = setup({ count: 2, selected: 1, info });
    ir.applyBadges(gallery, parsed);
    ir.applySummary(gallery, parsed);
    const thumbs = gallery.querySelectorAll(".grid-wrap .thumbnail-item");
    const best = badgeOf(thumbs[0]);
    assert.equal(visibleText(best), `${STAR}26.164`);
    assert.equal(visibleText(badgeOf(thumbs[1])), "21.652");
    assert.equal(best.title, `PickScore 26.164 ${DASH} rank 1 of 4 in its group ${DASH} best`);
    assert.equal(best.querySelector(".imagereward-sr").textContent, best.title);
    // green on PickScore's range (18 .. 24), where ImageReward's range would not tell 21.65 from 26.16
    assert.equal(best.style.getPropertyValue("--imagereward-color"), "hsl(120, 90%, 55%)");
    assert.equal(badgeOf(thumbs[1]).style.getPropertyValue("--imagereward-color"), ir.scoreColor(21.652, "PickScore"));
    assert.notEqual(badgeOf(thumbs[1]).style.getPropertyValue("--imagereward-color"), ir.scoreColor(21.652));
    // the strip and the preview
    const strip = gallery.querySelectorAll(".thumbnails .thumbnail-item");
    assert.equal(visibleText(badgeOf(strip[1])), "21.652");
    assert.equal(visibleText(badgeOf(gallery.querySelector(".preview"))), "21.652 \u00b7 rank 4/4");
    assert.equal(gallery.nextElementSibling.textContent,
        "ImageReward \u00b7 PickScore: 16 candidates scored, 2 kept, 14 discarded \u00b7 scores 17.50 \u2026 26.16");
});

test("a 4-decimal scorer (HPSv2.1): four decimals on the badge; the strip drops the leading zero", () => {
    const info = makeInfo({ images: [{ score: 0.27144, rank: 1, groupSize: 2 }, { score: -0.0123, rank: 2, groupSize: 2 }], scorer: "HPSv2.1" });
    const { gallery, parsed } = setup({ count: 2, selected: 0, info });
    ir.applyBadges(gallery, parsed);
    const grid = gallery.querySelectorAll(".grid-wrap .thumbnail-item");
    const strip = gallery.querySelectorAll(".thumbnails .thumbnail-item");
    assert.equal(visibleText(badgeOf(grid[0])), `${STAR}0.2714`);
    assert.equal(visibleText(badgeOf(strip[0])), `${STAR}.2714`);
    assert.equal(visibleText(badgeOf(strip[1])), `${MINUS}.0123`);
    assert.equal(badgeOf(grid[0]).title, `HPSv2.1 0.2714 ${DASH} rank 1 of 2 in its group ${DASH} best`);
    assert.equal(badgeOf(grid[0]).style.getPropertyValue("--imagereward-color"), ir.scoreColor(0.2714, "HPSv2.1"));
});

test("an ensemble job: the ensemble's score on the badge, its members in the tooltip and screen-reader text", () => {
    const info = makeInfo({
        images: [{ score: 0.8123, rank: 1, groupSize: 4, members: { "ImageReward": 0.41, "HPSv2.1": 0.27144 } }],
        scorer: "Ensemble", weights: "imagereward=1,hpsv2.1=2",
    });
    const { gallery, parsed } = setup({ count: 1, info });
    ir.applyBadges(gallery, parsed);
    ir.applySummary(gallery, parsed);
    const badge = badgeOf(gallery.querySelector(".grid-wrap .thumbnail-item"));
    assert.equal(visibleText(badge), `${STAR}0.812`);
    const expected = `Ensemble 0.812 (ImageReward 0.410, HPSv2.1 0.2714) ${DASH} rank 1 of 4 in its group ${DASH} best`;
    assert.equal(badge.title, expected);
    assert.equal(badge.querySelector(".imagereward-sr").textContent, expected);
    assert.match(gallery.nextElementSibling.textContent, /^ImageReward \u00b7 Ensemble: 16 candidates scored/);
});

test("the same number from another scorer updates the badge in place (tooltip, colour)", () => {
    const { gallery, parsed } = setup({ count: 1, info: makeInfo({ images: [{ score: 20.5, rank: 1, groupSize: 4 }] }) });
    ir.applyBadges(gallery, parsed);
    const badge = badgeOf(gallery.querySelector(".grid-wrap .thumbnail-item"));
    assert.equal(badge.title, `ImageReward score 20.500 ${DASH} rank 1 of 4 in its group ${DASH} best`);
    const pick = ir.parseGenerationInfo(makeInfo({ images: [{ score: 20.5, rank: 1, groupSize: 4 }], scorer: "PickScore" }));
    assert.equal(ir.applyBadges(gallery, pick).changed, 1);
    assert.equal(badgeOf(gallery.querySelector(".grid-wrap .thumbnail-item")), badge);
    assert.equal(badge.title, `PickScore 20.500 ${DASH} rank 1 of 4 in its group ${DASH} best`);
    assert.equal(badge.style.getPropertyValue("--imagereward-color"), ir.scoreColor(20.5, "PickScore"));
    assert.equal(ir.applyBadges(gallery, pick).changed, 0, "and then nothing more");
});

test("an infotext naming an unknown scorer gets no badge (not the ImageReward key's number)", () => {
    const info = makeInfo({ images: FOUR });
    info.infotexts[1] = info.infotexts[1] + ", ImageReward scorer: SomethingNew";
    const { gallery, parsed } = setup({ count: 4, info });
    assert.equal(ir.applyBadges(gallery, parsed).badges, 3);
    assert.equal(badgeOf(gallery.querySelectorAll(".grid-wrap .thumbnail-item")[1]), null);
});

test("an unfinished image: a plain grey label, no score, no star, after the kept image's badge", () => {
    const info = JSON.parse(require("node:fs").readFileSync(
        require("node:path").resolve(__dirname, "..", "fixtures", "generation_info_unfinished.json"), "utf8"));
    const { gallery, parsed } = setup({ count: 2, info });
    const result = ir.applyBadges(gallery, parsed);
    assert.equal(result.badges, 2);
    const thumbs = gallery.querySelectorAll(".grid-wrap .thumbnail-item");
    const kept = badgeOf(thumbs[0]);
    const label = badgeOf(thumbs[1]);
    assert.match(visibleText(kept), /^\u2605\d\.\d{3}$/);
    assert.equal(visibleText(label), "unfinished \u00b7 not saved");
    assert.ok(label.classList.contains("imagereward-badge--status"));
    assert.ok(!label.classList.contains("imagereward-badge--best"));
    assert.equal(label.querySelector(".imagereward-badge__star"), null);
});

test("an unpositioned thumbnail (SD.Next's modern UI) becomes the badge's containing block; a positioned one is left", () => {
    const { page, gallery, parsed } = setup({ count: 4, info: makeInfo({ images: FOUR }) });
    const thumbs = gallery.querySelectorAll(".grid-wrap .thumbnail-item");
    const sheet = page.document.createElement("style");
    sheet.textContent = ".thumbnail-item { position: static; } .thumbnail-item.kept-absolute { position: absolute; }";
    page.document.head.appendChild(sheet);
    thumbs[1].classList.add("kept-absolute");
    ir.applyBadges(gallery, parsed);
    assert.equal(thumbs[0].style.position, "relative", "a static thumbnail is positioned for its badge");
    assert.equal(thumbs[1].style.position, "", "a thumbnail the page positions keeps its own position");
    assert.ok(badgeOf(thumbs[0]) && badgeOf(thumbs[1]));
});

// ---------------------------------------------------------------------------------------------------------------
// The badge on the picture's corner where the picture does not fill its cell (SD.Next's modern UI)
// ---------------------------------------------------------------------------------------------------------------

const PLACEMENT = ["--imagereward-left", "--imagereward-top", "--imagereward-width"];

/**
 * Where the stylesheet puts a badge, in px: its rule for `side` worked out, with the badge's --imagereward-<side>
 * (0px when unset), 100% as the cell's size along that side and 1em as 16px. The rule must build on that property.
 */
function placedAt(page, badge, side) {
    const declared = page.window.getComputedStyle(badge).getPropertyValue(side);
    assert.ok(declared.includes(`var(--imagereward-${side}, 0px)`), `${side} builds on the picture's corner: ${declared}`);
    const corner = parseFloat(badge.style.getPropertyValue(`--imagereward-${side}`) || "0");
    const cell = side === "left" ? badge.parentNode.clientWidth : badge.parentNode.clientHeight;
    const expression = declared
        .replace(`var(--imagereward-${side}, 0px)`, `${corner}`)
        .replace(/(\d+(?:\.\d+)?)%/g, (_, n) => `${(Number(n) / 100) * cell}`)
        .replace(/(\d+(?:\.\d+)?)em/g, (_, n) => `${Number(n) * 16}`)
        .replace(/(\d+(?:\.\d+)?)px/g, "$1")
        .replace(/\bcalc\(/g, "(")
        .replace(/\b(max|min)\(/g, "Math.$1(");
    assert.match(expression, /^(?:[\d\s.+\-*/(),]|Math\.max|Math\.min)+$/, `only numbers and min/max/calc: ${declared}`);
    return Function(`return ${expression};`)();
}

test("scale-down thumbnails (SD.Next): the badge sits on the picture's corner, with the variant's inset", async () => {
    const { page, gallery, parsed } = setup({ count: 4, selected: 1, info: makeInfo({ images: FOUR }) });
    // a 128x256 picture in a 208x416 cell, scaled down at 50% 0%: drawn at natural size from x = 40
    layOutThumbnails(page, gallery, { fit: "scale-down", position: "50% 0%", natural: [128, 256] });
    ir.applyBadges(gallery, parsed);
    const grid = badgeOf(gallery.querySelector(".grid-wrap .thumbnail-item"));
    assert.equal(grid.style.getPropertyValue("--imagereward-left"), "40px");
    assert.equal(grid.style.getPropertyValue("--imagereward-top"), "0px");
    assert.equal(grid.style.getPropertyValue("--imagereward-width"), "128px", "its max-width follows the picture");
    assert.equal(placedAt(page, grid, "left"), 44);
    assert.equal(placedAt(page, grid, "top"), 4);
    // a tiny picture near the cell's right edge: the badge moves left to keep 8em inside the cell
    grid.parentNode.querySelector("img").naturalWidth = 16;
    grid.parentNode.querySelector("img").naturalHeight = 8;
    ir.applyBadges(gallery, parsed);
    assert.equal(grid.style.getPropertyValue("--imagereward-left"), "96px");
    assert.equal(placedAt(page, grid, "left"), 208 - 8 * 16 - 4);
    grid.parentNode.querySelector("img").naturalWidth = 128;
    grid.parentNode.querySelector("img").naturalHeight = 256;
    ir.applyBadges(gallery, parsed);
    const strip = badgeOf(gallery.querySelector(".thumbnails .thumbnail-item"));
    assert.equal(placedAt(page, strip, "left"), 41, "the strip's badge keeps its 1px inset");
    assert.equal(placedAt(page, strip, "top"), 1);
    // the large preview's badge keeps its corner
    const preview = badgeOf(gallery.querySelector(".preview"));
    assert.deepEqual(PLACEMENT.map((name) => preview.style.getPropertyValue(name)), ["", "", ""]);

    // up to date: a second pass writes nothing
    const recorder = recordMutations(page.window, gallery);
    assert.equal(ir.applyBadges(gallery, parsed).changed, 0);
    assert.equal((await recorder.stop()).length, 0);
});

test("the large preview (contain, A1111 and its forks): a portrait picture's badge sits on the picture", () => {
    const { page, gallery, parsed } = setup({ count: 4, selected: 1, info: makeInfo({ images: FOUR }) });
    layOutThumbnails(page, gallery, { fit: "cover", position: "50% 0%", natural: [128, 256] });
    const preview = gallery.querySelector(".preview");
    const big = preview.querySelector("img[data-testid=detailed-image]");
    const sheet = page.document.createElement("style");
    sheet.textContent = ".preview img { object-fit: contain; object-position: 50% 50%; }";
    page.document.head.appendChild(sheet);
    const value = (v) => ({ value: v, configurable: true, writable: true });
    Object.defineProperties(big, {
        offsetParent: { get: () => preview, configurable: true },
        offsetLeft: value(0), offsetTop: value(30), clientLeft: value(0), clientTop: value(0),
        clientWidth: value(600), clientHeight: value(400), naturalWidth: value(512), naturalHeight: value(768),
    });
    Object.defineProperties(preview, { clientWidth: value(600), clientHeight: value(500) });
    ir.applyBadges(gallery, parsed);
    const badge = badgeOf(preview);
    // 512x768 contained in 600x400 at 50% 50%: 266.67 wide, from x = 166.67, below the 30px of buttons
    assert.equal(badge.style.getPropertyValue("--imagereward-left"), "167px");
    assert.equal(badge.style.getPropertyValue("--imagereward-top"), "30px");
    assert.equal(placedAt(page, badge, "left"), 175);
    assert.equal(placedAt(page, badge, "top"), 38);
    // the thumbnails (cover) are left to the stylesheet
    const grid = badgeOf(gallery.querySelector(".grid-wrap .thumbnail-item"));
    assert.equal(grid.style.getPropertyValue("--imagereward-left"), "");
});

test("cover thumbnails (A1111, reForge): the stylesheet alone places the badge, no inline position is written", async () => {
    const { page, gallery, parsed } = setup({ count: 4, selected: 1, info: makeInfo({ images: FOUR }) });
    layOutThumbnails(page, gallery, { fit: "cover", position: "50% 0%", natural: [128, 256] });
    ir.applyBadges(gallery, parsed);
    for (const badge of gallery.querySelectorAll(".imagereward-badge")) {
        assert.deepEqual(PLACEMENT.map((name) => badge.style.getPropertyValue(name)), ["", "", ""]);
        assert.equal(badge.style.left, "");
        assert.equal(badge.style.top, "");
        assert.equal(badge.getAttribute("style"), `--imagereward-color: ${badge.style.getPropertyValue("--imagereward-color")};`);
    }
    const grid = badgeOf(gallery.querySelector(".grid-wrap .thumbnail-item"));
    assert.equal(placedAt(page, grid, "left"), 4);
    assert.equal(placedAt(page, grid, "top"), 4);
});

test("the badge moves when its picture loads, and back to the corner when the picture fills the cell", async () => {
    const { page, gallery, parsed } = setup({ count: 4, info: makeInfo({ images: FOUR }) });
    const images = layOutThumbnails(page, gallery, { fit: "scale-down", position: "50% 0%", natural: [0, 0] });
    const loads = images.map(() => 0);
    images.forEach((img, i) => {
        const add = img.addEventListener.bind(img);
        img.addEventListener = (type, ...rest) => { if (type === "load") loads[i]++; return add(type, ...rest); };
    });
    ir.applyBadges(gallery, parsed);
    const badge = badgeOf(images[0].parentNode);
    assert.equal(badge.style.getPropertyValue("--imagereward-left"), "", "not loaded: the cell's corner");

    images[0].naturalWidth = 64;
    images[0].naturalHeight = 64;
    images[0].dispatchEvent(new page.window.Event("load"));
    assert.equal(badge.style.getPropertyValue("--imagereward-left"), "72px");
    assert.equal(badge.style.getPropertyValue("--imagereward-width"), "64px");

    // re-renders and new scores for the same elements: one load listener per picture all the same
    ir.applyBadges(gallery, ir.parseGenerationInfo(makeInfo({ images: FOUR.slice().reverse() })));
    ir.applyBadges(gallery, parsed);
    assert.deepEqual(loads, [1, 1, 1, 1]);
    assert.equal(badge.style.getPropertyValue("--imagereward-left"), "72px", "refreshed in place");

    // a new picture that fills the cell: back to the stylesheet's corner
    images[0].naturalWidth = 208;
    images[0].naturalHeight = 416;
    images[0].dispatchEvent(new page.window.Event("load"));
    assert.deepEqual(PLACEMENT.map((name) => badge.style.getPropertyValue(name)), ["", "", ""]);

    // a cell resized while the badges refresh: the next pass follows the picture
    images[1].naturalWidth = 64;
    images[1].naturalHeight = 64;
    images[1].clientWidth = 300;
    assert.equal(ir.applyBadges(gallery, parsed).changed, 1);
    assert.equal(badgeOf(images[1].parentNode).style.getPropertyValue("--imagereward-left"), "118px");
});
