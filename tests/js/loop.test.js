"use strict";
// The script as the browser runs it: evaluated as a classic script in a jsdom window with stand-ins for the
// WebUI's helpers (gradioApp, onAfterUiUpdate, onUiLoaded, onOptionsChanged, opts); the test plays the WebUI.

const test = require("node:test");
const assert = require("node:assert/strict");
const {
    makePage, renderGallery, selectInGallery, loadScriptInPage, makeInfo, recordMutations, sleep, layOutThumbnails, FOUR,
} = require("./helpers");

const STAR = "\u2605";

function fire(callbacks) {
    for (const cb of callbacks.afterUiUpdate) cb();
}

function setInfo(page, tab, info) {
    // gradio sets the textarea's value property (no DOM mutation)
    page.textarea(tab).value = typeof info === "string" ? info : JSON.stringify(info);
}

test("classic scripts: two globals (logic, overlay), registers with the WebUI helpers, no console errors", () => {
    const page = makePage();
    const { callbacks, errors, addedGlobals, api } = loadScriptInPage(page);
    assert.deepEqual(addedGlobals.sort(), ["imageRewardLogic", "imageRewardOverlay"]);
    assert.equal(typeof api.update, "function");
    assert.equal(callbacks.afterUiUpdate.length, 1);
    assert.equal(callbacks.uiLoaded.length, 1);
    assert.equal(callbacks.optionsChanged.length, 1);
    assert.equal(api.install(), false, "registers once");
    assert.deepEqual(errors, []);
});

test("without the WebUI helpers the script loads without throwing and does nothing", () => {
    const page = makePage();
    renderGallery(page.gallery(), { count: 4, selected: 0 });
    setInfo(page, "txt2img", makeInfo({ images: FOUR }));
    const { errors, addedGlobals, api } = loadScriptInPage(page, { helpers: false });
    assert.deepEqual(addedGlobals.sort(), ["imageRewardLogic", "imageRewardOverlay"]);
    assert.equal(api.install(), false);
    assert.equal(page.document.querySelectorAll(".imagereward-badge").length, 0);
    assert.deepEqual(errors, []);
});

test("extension unused (no scores in the info): no DOM change at all, ever", async () => {
    const page = makePage();
    renderGallery(page.gallery("txt2img"), { count: 5, selected: 0 });
    renderGallery(page.gallery("img2img"), { count: 2, selected: null });
    setInfo(page, "txt2img", makeInfo({ images: FOUR, grid: true, details: false, infotextScores: false }));
    const root = page.document.querySelector("gradio-app");
    const html = root.innerHTML;
    const recorder = recordMutations(page.window, root);
    const { callbacks, errors } = loadScriptInPage(page);
    for (const cb of callbacks.uiLoaded) cb();
    fire(callbacks);
    fire(callbacks);
    selectInGallery(page.gallery(), 2);
    await sleep(60); // let the gallery observer's scheduled pass run too
    fire(callbacks);
    // only the selection's own class/src changes, nothing of ours
    const records = (await recorder.stop()).filter((r) => !(r.type === "attributes" && ["class", "src"].includes(r.attributeName)));
    assert.equal(records.length, 0);
    assert.equal(root.querySelectorAll("[class*=imagereward], [id^=imagereward], [aria-describedby]").length, 0);
    // garbage in the textbox: same
    setInfo(page, "txt2img", "{not json");
    fire(callbacks);
    assert.equal(root.querySelectorAll("[class*=imagereward]").length, 0);
    assert.deepEqual(errors, []);
    assert.notEqual(html, root.innerHTML, "(sanity: the selection itself did change the page)");
});

test("after a job the badges and summary appear; the loop bails out when nothing changed", async () => {
    const page = makePage();
    const { callbacks, errors, api } = loadScriptInPage(page);
    fire(callbacks); // page loaded, nothing generated yet
    assert.equal(page.document.querySelectorAll(".imagereward-badge").length, 0);

    renderGallery(page.gallery(), { count: 5, selected: 0 });
    setInfo(page, "txt2img", makeInfo({ images: FOUR, grid: true }));
    fire(callbacks);
    const gallery = page.gallery();
    assert.equal(gallery.querySelectorAll(".grid-wrap .imagereward-badge").length, 4);
    assert.equal(gallery.querySelectorAll(".thumbnails .imagereward-badge").length, 4);
    assert.equal(gallery.querySelector(".preview > .imagereward-badge"), null, "the grid image is selected: no preview badge");
    assert.ok(gallery.nextElementSibling.classList.contains("imagereward-summary"));

    // nothing changed: no work, no mutation
    const recorder = recordMutations(page.window, page.document.body);
    assert.equal(api.update(), 0);
    fire(callbacks);
    assert.equal((await recorder.stop()).length, 0);
    assert.deepEqual(errors, []);
});

test("selecting another thumbnail updates the preview badge via the gallery observer", async () => {
    const page = makePage();
    const { callbacks } = loadScriptInPage(page);
    renderGallery(page.gallery(), { count: 4, selected: 0 });
    setInfo(page, "txt2img", makeInfo({ images: FOUR }));
    fire(callbacks);
    const preview = page.gallery().querySelector(".preview");
    const previewBadgeText = () => preview.querySelector(":scope > .imagereward-badge .imagereward-badge__score").textContent;
    assert.equal(previewBadgeText(), "0.812 \u00b7 rank 1/4");

    // a class/src change only: the WebUI's childList observer would not report it
    selectInGallery(page.gallery(), 2);
    await sleep(80);
    assert.equal(previewBadgeText(), "1.950 \u00b7 rank 1/4");
    assert.ok(preview.querySelector(":scope > .imagereward-badge").textContent.includes(STAR));
});

test("a new job replaces scores; a job without scores clears everything", () => {
    const page = makePage();
    const { callbacks } = loadScriptInPage(page);
    const gallery = page.gallery();
    renderGallery(gallery, { count: 4, selected: 0 });
    setInfo(page, "txt2img", makeInfo({ images: FOUR }));
    fire(callbacks);
    assert.equal(gallery.querySelectorAll(".imagereward-badge").length, 9);

    // same number of images, new scores (gradio reuses the elements)
    setInfo(page, "txt2img", makeInfo({ images: FOUR.map((x) => ({ ...x, score: x.score - 1 })) }));
    fire(callbacks);
    const first = gallery.querySelector(".grid-wrap .thumbnail-item .imagereward-badge__score");
    assert.equal(first.textContent, "\u22120.188");

    // a job with the extension off
    setInfo(page, "txt2img", makeInfo({ images: FOUR, details: false, infotextScores: false }));
    fire(callbacks);
    assert.equal(page.document.querySelectorAll(".imagereward-badge, .imagereward-summary").length, 0);
});

test("gradio re-renders the gallery with the same info: badges come back", () => {
    const page = makePage();
    const { callbacks } = loadScriptInPage(page);
    const gallery = page.gallery();
    renderGallery(gallery, { count: 4, selected: 1 });
    setInfo(page, "txt2img", makeInfo({ images: FOUR }));
    fire(callbacks);
    renderGallery(gallery, { count: 4, selected: 1 }); // same shape, fresh elements
    fire(callbacks);
    assert.equal(gallery.querySelectorAll(".imagereward-badge").length, 9);
    renderGallery(gallery, { count: 4, selected: null }); // preview closed
    fire(callbacks);
    assert.equal(gallery.querySelectorAll(".imagereward-badge").length, 4);
});

test("txt2img and img2img are handled independently", () => {
    const page = makePage();
    const { callbacks } = loadScriptInPage(page);
    renderGallery(page.gallery("txt2img"), { count: 4, selected: null });
    renderGallery(page.gallery("img2img"), { count: 3, selected: 0 });
    setInfo(page, "txt2img", makeInfo({ images: FOUR }));
    setInfo(page, "img2img", makeInfo({ images: FOUR.slice(0, 2), grid: true, details: false }));
    fire(callbacks);
    assert.equal(page.gallery("txt2img").querySelectorAll(".imagereward-badge").length, 4);
    const img2img = page.gallery("img2img");
    assert.equal(img2img.querySelectorAll(".imagereward-badge").length, 2 + 2, "grid and strip, grid image bare, preview on the grid image");
    assert.equal(img2img.nextElementSibling, null, "infotext-only data: no summary");
    const ids = Array.from(page.document.querySelectorAll(".imagereward-badge")).map((b) => b.id);
    assert.equal(new Set(ids).size, ids.length, "badge ids are unique across both galleries");
});

test("the setting: off removes everything, on brings it back (via onOptionsChanged)", async () => {
    const page = makePage();
    const { callbacks } = loadScriptInPage(page, { opts: { imagereward_show_overlays: false } });
    const gallery = page.gallery();
    renderGallery(gallery, { count: 4, selected: 0 });
    setInfo(page, "txt2img", makeInfo({ images: FOUR }));
    const html = page.document.body.innerHTML;
    const recorder = recordMutations(page.window, page.document.body);
    fire(callbacks);
    assert.equal((await recorder.stop()).length, 0, "off: no DOM change");
    assert.equal(page.document.body.innerHTML, html);

    page.window.opts.imagereward_show_overlays = true;
    for (const cb of callbacks.optionsChanged) cb();
    assert.equal(gallery.querySelectorAll(".imagereward-badge").length, 9);
    assert.ok(gallery.nextElementSibling.classList.contains("imagereward-summary"));

    page.window.opts.imagereward_show_overlays = false;
    for (const cb of callbacks.optionsChanged) cb();
    assert.equal(page.document.querySelectorAll("[class*=imagereward]").length, 0);
});

test("in the page: a PickScore job from the real fixture gets PickScore badges and summary", () => {
    const fs = require("node:fs");
    const path = require("node:path");
    const info = fs.readFileSync(path.resolve(__dirname, "..", "fixtures", "generation_info_pickscore.json"), "utf8");
    const page = makePage();
    renderGallery(page.gallery(), { count: 5, selected: null });
    setInfo(page, "txt2img", info);
    const { callbacks, errors } = loadScriptInPage(page);
    fire(callbacks);
    const badges = page.gallery().querySelectorAll(".imagereward-badge");
    assert.equal(badges.length, 4);
    assert.equal(badges[0].title, "PickScore 26.164 \u2014 rank 1 of 4 in its group \u2014 best");
    assert.match(page.gallery().nextElementSibling.textContent, /^ImageReward \u00b7 PickScore: 16 candidates scored, 4 kept/);
    assert.deepEqual(errors, []);
});

test("after a paste-back the threshold knob follows the number box once the scorer's range arrives", () => {
    // Found in the real WebUI: a pasted PickScore threshold (21.5) arrived while the slider still had ImageReward's
    // range (-3..3); the browser clamped the range input to 3, then the range became 15..25 with the value
    // unchanged, so the knob stayed at 15 while the number box (and the job) said 21.5.
    const page = makePage();
    const doc = page.document;
    const box = doc.createElement("div");
    box.id = "script_txt2img_imagereward_imagereward_threshold";
    box.innerHTML = '<input type="number" min="15" max="25" step="0.05"><input type="range" min="-3" max="3" step="0.05">';
    doc.querySelector(".gradio-container").appendChild(box);
    const [number, range] = box.querySelectorAll("input");
    number.value = "21.5";
    range.value = "21.5"; // clamped by the browser to the old range
    assert.equal(range.value, "3");
    const { callbacks, errors } = loadScriptInPage(page);
    const seen = [];
    range.addEventListener("input", () => seen.push(range.value));
    range.min = "15";
    range.max = "25";
    range.value = "15"; // what the real page showed (a browser clamps again; jsdom does not)
    fire(callbacks);
    assert.equal(range.value, "21.5");
    assert.deepEqual(seen, ["21.5"], "one input event, so the WebUI's slider redraws its fill");
    fire(callbacks);
    assert.deepEqual(seen, ["21.5"], "nothing to do once they agree");
    number.value = "40"; // outside the range: left to the WebUI
    fire(callbacks);
    assert.equal(range.value, "21.5");
    assert.deepEqual(errors, []);
});

test("a resized gallery (SD.Next's scale-down thumbnails): the badges follow their pictures, nothing else is redone", async () => {
    const page = makePage();
    const resizes = [];
    page.window.ResizeObserver = class {
        constructor(callback) { this.callback = callback; }
        observe(target) { resizes.push({ target, callback: this.callback }); }
    };
    const { callbacks, errors } = loadScriptInPage(page);
    const gallery = page.gallery();
    renderGallery(gallery, { count: 4 });
    const images = layOutThumbnails(page, gallery, { fit: "scale-down", position: "50% 0%", natural: [64, 64] });
    setInfo(page, "txt2img", makeInfo({ images: FOUR }));
    fire(callbacks);
    const badge = gallery.querySelector(".thumbnail-item > .imagereward-badge");
    assert.equal(badge.style.getPropertyValue("--imagereward-left"), "72px");
    const observing = resizes.filter((r) => r.target === gallery);
    assert.equal(observing.length, 1, "one observer per gallery");

    images.forEach((img) => { img.clientWidth = 300; });
    const recorder = recordMutations(page.window, gallery);
    fire(callbacks);
    assert.equal(badge.style.getPropertyValue("--imagereward-left"), "72px", "(the loop bails out: nothing it watches changed)");
    observing[0].callback([]);
    assert.equal(badge.style.getPropertyValue("--imagereward-left"), "118px");
    const records = await recorder.stop();
    assert.equal(records.length, 4, "one style write per badge moved");
    assert.ok(records.every((r) => r.type === "attributes" && r.attributeName === "style"));
    const again = recordMutations(page.window, gallery);
    observing[0].callback([]);
    assert.equal((await again.stop()).length, 0, "in place: no write");
    assert.deepEqual(errors, []);
});
