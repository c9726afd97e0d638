"use strict";
// Pure logic of javascript/imagereward.js, loaded with require() as Node sees it (no DOM, no WebUI helpers).

const test = require("node:test");
const assert = require("node:assert/strict");
const { makeInfo, FOUR, SCRIPT_PATH } = require("./helpers");

const ir = require(SCRIPT_PATH);
const MINUS = "\u2212";

test("loads under Node without a browser: exports the API and registers nothing", () => {
    for (const name of ["parseGenerationInfo", "parseInfotextScore", "formatScore", "scoreColor", "scoreHue",
        "badgeTooltip", "summaryText", "applyBadges", "applySummary", "clearOverlays", "update", "install"]) {
        assert.equal(typeof ir[name], "function", name);
    }
    assert.equal(ir.install(), false, "no WebUI helpers under Node: install() must not register");
    assert.equal(ir.update(), 0, "update() without a document does nothing");
    assert.equal(typeof globalThis.imageRewardOverlay, "undefined");
});

test("parseGenerationInfo: details object maps gallery index -> score, rank, group size, best", () => {
    const parsed = ir.parseGenerationInfo(JSON.stringify(makeInfo({ images: FOUR })));
    assert.ok(parsed);
    assert.equal(parsed.firstIndex, 0);
    assert.equal(parsed.count, 4);
    assert.equal(parsed.hasDetails, true);
    assert.deepEqual(Object.keys(parsed.images).map(Number), [0, 1, 2, 3]);
    assert.deepEqual(parsed.images[0], { score: 0.812, rank: 1, groupSize: 4, group: 0, best: true, source: "details" });
    assert.equal(parsed.images[1].score, -0.422); // the infotext's value: what the file says
    assert.equal(parsed.images[1].best, false);
    assert.equal(parsed.images[2].best, true);
    assert.equal(parsed.images[3].score, -2.5);
    assert.equal(parsed.summary.scored, 16);
    assert.equal(parsed.summary.kept, 4);
    assert.equal(parsed.summary.discarded, 12);
    assert.equal(parsed.summary.mode, "top-k");
    assert.equal(parsed.summary.threshold, null);
    assert.equal(parsed.summary.fallback, false);
});

test("parseGenerationInfo accepts an already parsed object and a details object stored as a JSON string", () => {
    const info = makeInfo({ images: FOUR });
    assert.equal(ir.parseGenerationInfo(info).count, 4);
    info.extra_generation_params["ImageReward details"] = JSON.stringify(info.extra_generation_params["ImageReward details"]);
    const parsed = ir.parseGenerationInfo(JSON.stringify(info));
    assert.equal(parsed.images[2].score, 1.95);
    assert.equal(parsed.hasDetails, true);
});

test("parseGenerationInfo: grid offset — index 0 (the grid) never gets a score", () => {
    const info = makeInfo({ images: FOUR, grid: true });
    // a stray entry for the grid position must be ignored too
    info.extra_generation_params["ImageReward details"].images.push({ index: 0, score: 9, rank: 1, group_size: 1, best: true });
    const parsed = ir.parseGenerationInfo(JSON.stringify(info));
    assert.equal(parsed.firstIndex, 1);
    assert.deepEqual(Object.keys(parsed.images).map(Number), [1, 2, 3, 4]);
    assert.equal(parsed.images[1].score, 0.812);
    assert.equal(parsed.images[4].score, -2.5);
});

test("parseGenerationInfo: infotext fallback when the details object is absent (negatives, grid offset)", () => {
    const info = makeInfo({ images: FOUR, grid: true, details: false });
    const parsed = ir.parseGenerationInfo(JSON.stringify(info));
    assert.equal(parsed.hasDetails, false);
    assert.equal(parsed.summary, null);
    assert.deepEqual(Object.keys(parsed.images).map(Number), [1, 2, 3, 4]);
    assert.deepEqual(parsed.images[1], { score: 0.812, rank: null, groupSize: null, group: null, best: false, source: "infotext" });
    assert.equal(parsed.images[2].score, -0.422);
    assert.equal(parsed.images[4].score, -2.5);
});

test("parseGenerationInfo: details first, infotexts fill images the details do not list", () => {
    const info = makeInfo({ images: FOUR });
    info.extra_generation_params["ImageReward details"].images.splice(1, 1); // drop index 1
    const parsed = ir.parseGenerationInfo(info);
    assert.equal(parsed.images[1].source, "infotext");
    assert.equal(parsed.images[1].score, -0.422);
    assert.equal(parsed.images[0].source, "details");
});

test("parseGenerationInfo: missing keys in details entries are tolerated", () => {
    const info = makeInfo({ images: FOUR });
    info.extra_generation_params["ImageReward details"] = {
        images: [
            { index: 0, score: 0.8121 },                    // no rank, no group, no best
            { index: 1, score: "-0.4217", rank: 1 },        // numeric string; best derived from rank
            { index: 2, rank: 2, group_size: 4 },           // no score: skipped (infotext fills it)
            { score: 1.0 },                                 // no index: skipped
            "garbage", null, 7,
            { index: 3, score: -2.5, rank: 5, group_size: 4 }, // inconsistent size dropped
        ],
    };
    const parsed = ir.parseGenerationInfo(info);
    assert.deepEqual(parsed.images[0], { score: 0.812, rank: null, groupSize: null, group: null, best: false, source: "details" });
    assert.equal(parsed.images[1].score, -0.422);
    assert.equal(parsed.images[1].best, true);
    assert.equal(parsed.images[2].source, "infotext");
    assert.equal(parsed.images[3].rank, 5);
    assert.equal(parsed.images[3].groupSize, null);
    // no summary in details: a minimal one from the visible images
    assert.equal(parsed.summary.kept, 4);
    assert.equal(parsed.summary.scored, null);
});

test("the badge always shows the infotext's score; details that disagree (Upscale, X/Y/Z) add nothing", () => {
    const info = makeInfo({ images: FOUR });
    // X/Y/Z copies the first cell's details; after Upscale the details are the old job's
    info.extra_generation_params["ImageReward details"].images[0].score = -0.5;
    const parsed = ir.parseGenerationInfo(info);
    assert.deepEqual(parsed.images[0], { score: 0.812, rank: null, groupSize: null, group: null, best: false, source: "infotext" });
    assert.equal(parsed.images[1].source, "details");
    // an image whose infotext has no score gets no badge, whatever the details say
    const bare = makeInfo({ images: FOUR, infotextScores: false });
    assert.equal(ir.parseGenerationInfo(bare).images[0], undefined);
});

test("parseGenerationInfo returns null for garbage, non-objects and jobs without scores", () => {
    for (const input of ["", "{", "not json", "null", "[]", "42", "\"text\"", undefined, null, 5, [], "{\"infotexts\": 3}"]) {
        assert.equal(ir.parseGenerationInfo(input), null, String(input));
    }
    const plain = makeInfo({ images: FOUR, details: false, infotextScores: false });
    assert.equal(ir.parseGenerationInfo(JSON.stringify(plain)), null);
    // extra_generation_params of the wrong type, details of the wrong type
    assert.equal(ir.parseGenerationInfo({ infotexts: ["x"], extra_generation_params: "nope" }), null);
    assert.equal(ir.parseGenerationInfo({ infotexts: ["x"], extra_generation_params: { "ImageReward details": "{broken" } }), null);
    assert.equal(ir.parseGenerationInfo({ infotexts: ["x"], extra_generation_params: { "ImageReward details": null } }), null);
    // a negative / fractional index_of_first_image is treated as 0
    const odd = makeInfo({ images: FOUR, details: false });
    odd.index_of_first_image = -3;
    assert.equal(ir.parseGenerationInfo(odd).firstIndex, 0);
});

test("parseInfotextScore reads only the ImageReward key of the last (settings) line", () => {
    const S = "Steps: 20, Sampler: Euler a, Seed: 5";
    assert.equal(ir.parseInfotextScore(`cat\n${S}, ImageReward: 0.812`), 0.812);
    assert.equal(ir.parseInfotextScore(`cat\nSteps: 20, ImageReward: -1.234, Seed: 5, Version: v1.10.1`), -1.234);
    assert.equal(ir.parseInfotextScore(`cat\n${S}, ImageReward: \u22120.5`), -0.5);
    assert.equal(ir.parseInfotextScore(`cat\n${S}, ImageReward: 1e-3`), 0.001);
    assert.equal(ir.parseInfotextScore(`cat\n${S}, ImageReward: "0.25"`), 0.25);
    assert.equal(ir.parseInfotextScore(`cat\r\n${S}, ImageReward: 0.3\r\n\r\n`), 0.3, "trailing blank lines, CRLF");
    assert.equal(ir.parseInfotextScore(`${S}, ImageReward: 0.4`), 0.4, "a settings line alone");
    // a key given twice: the last value (as the WebUI's and our Python parser do)
    assert.equal(ir.parseInfotextScore("p\nImageReward: 1, Steps: 20, ImageReward: 2, Seed: 3"), 2);
    // the last line is not a settings line (fewer than 3 pairs), as in the WebUI's parser
    assert.equal(ir.parseInfotextScore("a cat\nImageReward: 0.5"), null);
    assert.equal(ir.parseInfotextScore("a cat\nSteps: 20, ImageReward: 0.5"), null);
    // not on the settings line: ignored
    assert.equal(ir.parseInfotextScore(`ImageReward: 3, a prompt\n${S}`), null);
    assert.equal(ir.parseInfotextScore(`a cat, ImageReward: 0.5, x\n${S}`), null);
    // other keys that merely start with ImageReward
    assert.equal(ir.parseInfotextScore(`p\n${S}, ImageReward model: v1, ImageReward details: 2`), null);
    // inside a quoted value of another key
    assert.equal(ir.parseInfotextScore(`p\n${S}, Template: "a, ImageReward: 9, b", Size: 1x1`), null);
    assert.equal(ir.parseInfotextScore(`p\n${S}, Note: "a, ImageReward: 9", ImageReward: 0.5`), 0.5);
    assert.equal(ir.parseInfotextScore(`p\nSteps: 20, ImageReward: 0.100, Lora hashes: "a: 1, b: 2", Seed: 3`), 0.1);
    // garbage values and inputs
    assert.equal(ir.parseInfotextScore(`p\n${S}, ImageReward: high`), null);
    assert.equal(ir.parseInfotextScore(`p\n${S}, ImageReward: n/a`), null);
    assert.equal(ir.parseInfotextScore(`p\n${S}, ImageReward: NaN`), null);
    assert.equal(ir.parseInfotextScore(`p\n${S}, ImageReward: Infinity`), null);
    assert.equal(ir.parseInfotextScore(`p\n${S}, ImageReward:`), null);
    assert.equal(ir.parseInfotextScore(""), null);
    assert.equal(ir.parseInfotextScore(null), null);
    assert.equal(ir.parseInfotextScore(42), null);
});

test("formatScore: two decimals, typographic minus for negatives, no '-0.00'", () => {
    assert.equal(ir.formatScore(0.8123), "0.81");
    assert.equal(ir.formatScore(-0.4217), `${MINUS}0.42`);
    assert.equal(ir.formatScore(-1.234), `${MINUS}1.23`);
    assert.equal(ir.formatScore(2), "2.00");
    assert.equal(ir.formatScore(-0.004), "0.00");
    assert.equal(ir.formatScore(0), "0.00");
    assert.equal(ir.formatScore(0.8123, 3), "0.812");
    assert.equal(ir.formatScore(NaN), "");
    assert.equal(ir.formatScore(Infinity), "");
    assert.equal(ir.formatScore("0.5"), "");
    assert.equal(ir.formatScore(null), "");
});

test("colour scale: fixed -2 red, 0 amber, +2 green, clamped, monotonic", () => {
    assert.equal(ir.scoreHue(-2), 0);
    assert.equal(ir.scoreHue(0), 40);
    assert.equal(ir.scoreHue(2), 120);
    assert.equal(ir.scoreHue(-1), 20);
    assert.equal(ir.scoreHue(1), 80);
    assert.equal(ir.scoreColor(-7), ir.scoreColor(-2), "clamped below");
    assert.equal(ir.scoreColor(99), ir.scoreColor(2), "clamped above");
    assert.equal(ir.scoreColor(-2), "hsl(0, 90%, 55%)");
    assert.equal(ir.scoreColor(2), "hsl(120, 90%, 55%)");
    assert.match(ir.scoreColor(NaN), /^hsl\(0, 0%, \d+%\)$/, "grey when there is no score");
    let previous = -1;
    for (let s = -3; s <= 3; s += 0.25) {
        const hue = ir.scoreHue(s);
        assert.ok(hue >= previous, `hue not decreasing at ${s}`);
        previous = hue;
    }
    // fixed, not relative to the job: the same score always gets the same colour
    assert.equal(ir.scoreColor(0.5), ir.scoreColor(0.5));
});

test("badgeTooltip: score and rank in its group, best marked", () => {
    assert.equal(ir.badgeTooltip({ score: 0.8123, rank: 1, groupSize: 4, best: true }),
        "ImageReward score 0.812 \u2014 rank 1 of 4 in its group \u2014 best");
    assert.equal(ir.badgeTooltip({ score: -0.4217, rank: 3, groupSize: 4, best: false }),
        `ImageReward score ${MINUS}0.422 \u2014 rank 3 of 4 in its group`);
    assert.equal(ir.badgeTooltip({ score: 0.1, rank: 2, groupSize: null, best: false }),
        "ImageReward score 0.100 \u2014 rank 2 in its group");
    assert.equal(ir.badgeTooltip({ score: 0.1, rank: null, groupSize: null, best: true }),
        "ImageReward score 0.100 \u2014 best in its group");
    assert.equal(ir.badgeTooltip({ score: 0.1, rank: null, groupSize: null, best: false }), "ImageReward score 0.100");
    assert.equal(ir.badgeTooltip({ score: 0.1, rank: 1, groupSize: 1, best: true }),
        "ImageReward score 0.100 \u2014 the only candidate in its group");
    assert.equal(ir.badgeTooltip(null), "");
});

test("summaryText: counts, range, fallback note, missing parts left out", () => {
    assert.equal(ir.summaryText({ scored: 16, kept: 4, discarded: 12, min: -1.234, max: 0.812, fallback: false }),
        `ImageReward: 16 candidates scored, 4 kept, 12 discarded \u00b7 scores ${MINUS}1.23 \u2026 0.81`);
    assert.equal(ir.summaryText({ scored: 4, kept: 1, discarded: 3, min: -2.1, max: -1.5, threshold: 0.5, fallback: true }),
        `ImageReward: 4 candidates scored, 1 kept, 3 discarded \u00b7 scores ${MINUS}2.10 \u2026 ${MINUS}1.50` +
        ` \u00b7 no candidate reached the threshold (0.50), so the best was kept anyway`);
    assert.equal(ir.summaryText({ scored: 1, kept: 1, discarded: 0, min: 0.3, max: 0.3 }),
        "ImageReward: 1 candidate scored, 1 kept, 0 discarded \u00b7 score 0.30");
    assert.equal(ir.summaryText({ scored: 8, kept: 2 }), "ImageReward: 8 candidates scored, 2 kept, 6 discarded");
    assert.equal(ir.summaryText({ kept: 3, min: 0.1, max: 0.2 }), "ImageReward: 3 images scored \u00b7 scores 0.10 \u2026 0.20");
    assert.equal(ir.summaryText({ fallback: true }), "ImageReward: no candidate reached the threshold, so the best was kept anyway");
    assert.equal(ir.summaryText({}), "");
    assert.equal(ir.summaryText(null), "");
    assert.equal(ir.summaryText("x"), "");
});

test("overlaysEnabled: default on, off only for an explicit false", () => {
    assert.equal(ir.overlaysEnabled(undefined), true);
    assert.equal(ir.overlaysEnabled({}), true);
    assert.equal(ir.overlaysEnabled({ imagereward_show_overlays: true }), true);
    assert.equal(ir.overlaysEnabled({ imagereward_show_overlays: false }), false);
});

test("style.css only styles our own namespaced classes", () => {
    const fs = require("node:fs");
    const path = require("node:path");
    const css = fs.readFileSync(path.resolve(__dirname, "..", "..", "style.css"), "utf8").replace(/\/\*[\s\S]*?\*\//g, "");
    const selectors = [];
    const re = /([^{}]+)\{/g;
    let m;
    while ((m = re.exec(css))) {
        const prelude = m[1].trim();
        if (prelude.startsWith("@")) continue; // @media wrapper
        selectors.push(...prelude.split(",").map((s) => s.trim()));
    }
    assert.ok(selectors.length > 5);
    for (const selector of selectors) {
        // the last compound selector (the element styled) must be one of ours; ancestors may be the theme's .dark
        const last = selector.split(/\s+|>/).filter(Boolean).pop();
        assert.match(last, /^\.imagereward-[a-z_-]+/, selector);
        for (const cls of selector.match(/\.[A-Za-z_-][\w-]*/g)) {
            assert.ok(cls === ".dark" || cls.startsWith(".imagereward-"), `${selector}: ${cls}`);
        }
    }
});
