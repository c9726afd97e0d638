"use strict";
// Test helpers: a jsdom page shaped like the WebUI's output panel on gradio 3.41.2 (A1111 1.10), built with DOM calls
// (the real gallery nests <button>s, which the HTML parser would not allow), and Processed.js()-like info objects.

const fs = require("node:fs");
const path = require("node:path");
const { JSDOM } = require("jsdom");

const SCRIPT_PATH = path.resolve(__dirname, "..", "..", "javascript", "imagereward.js");
const LOGIC_PATH = path.resolve(__dirname, "..", "..", "javascript", "imagereward-logic.js");
// As the WebUI loads them: every file of javascript/ in name order (imagereward-logic.js first).
const SCRIPT_SOURCE = fs.readFileSync(LOGIC_PATH, "utf8") + "\n" + fs.readFileSync(SCRIPT_PATH, "utf8");

function el(doc, tag, attrs, children) {
    const node = doc.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
        node.setAttribute(name, value);
    }
    for (const child of children || []) {
        node.appendChild(typeof child === "string" ? doc.createTextNode(child) : child);
    }
    return node;
}

function thumbnail(doc, kind, i, count, selected) {
    const cls = `thumbnail-item thumbnail-${kind}${selected ? " selected" : ""} svelte-1b19cri`;
    const img = el(doc, "img", { src: `/file=outputs/${i}.png`, alt: "", loading: "lazy", class: "svelte-1b19cri" });
    return el(doc, "button", { class: cls, "aria-label": `Thumbnail ${i + 1} of ${count}` }, [img]);
}

/**
 * Fills `gallery` (the #<tab>_gallery block) with gradio 3.41's gallery markup.
 * count: number of images; selected: index or null (null = grid view; a number = preview + strip).
 */
function renderGallery(gallery, { count, selected = null }) {
    const doc = gallery.ownerDocument;
    while (gallery.firstChild) gallery.removeChild(gallery.firstChild);
    gallery.appendChild(el(doc, "div", { class: "wrap default svelte-gjihhp hide" }));
    if (count === 0) {
        gallery.appendChild(el(doc, "div", { class: "empty unpadded_box large" }));
        return;
    }
    if (selected !== null) {
        const preview = el(doc, "button", { class: "preview svelte-1b19cri" });
        preview.appendChild(el(doc, "div", { class: "icon-buttons svelte-1b19cri" }, [
            el(doc, "div", { class: "svelte-1030q2h" }, [el(doc, "button", { "aria-label": "Clear", title: "Clear" })]),
        ]));
        const big = el(doc, "button", { class: "image-button svelte-1b19cri", "aria-label": "detailed view of selected image" }, [
            el(doc, "img", { "data-testid": "detailed-image", src: `/file=outputs/${selected}.png`, alt: "" }),
        ]);
        preview.appendChild(big);
        const strip = el(doc, "div", { class: "thumbnails scroll-hide svelte-1b19cri", "data-testid": "container_el" });
        for (let i = 0; i < count; i++) strip.appendChild(thumbnail(doc, "small", i, count, i === selected));
        preview.appendChild(strip);
        gallery.appendChild(preview);
    }
    const grid = el(doc, "div", { class: "grid-container svelte-1b19cri", style: "--grid-cols:4; --object-fit: contain;" });
    for (let i = 0; i < count; i++) grid.appendChild(thumbnail(doc, "lg", i, count, i === selected));
    gallery.appendChild(el(doc, "div", { class: "grid-wrap svelte-1b19cri fixed-height" }, [grid]));
}

/** Moves the "selected" class (and the preview image) like gradio does when another thumbnail is clicked. */
function selectInGallery(gallery, index) {
    for (const list of gallery.querySelectorAll(".thumbnails, .grid-wrap")) {
        list.querySelectorAll(".thumbnail-item").forEach((item, i) => item.classList.toggle("selected", i === index));
    }
    const img = gallery.querySelector(".preview img[data-testid=detailed-image]");
    if (img) img.setAttribute("src", `/file=outputs/${index}.png`);
}

function outputPanel(doc, tab) {
    const gallery = el(doc, "div", { id: `${tab}_gallery`, class: "block gradio-gallery svelte-90oupt" });
    const container = el(doc, "div", { id: `${tab}_gallery_container`, class: "gr-group" }, [gallery]);
    const buttons = el(doc, "div", { id: `image_buttons_${tab}`, class: "image-buttons" });
    const textarea = el(doc, "textarea", { "data-testid": "textbox", class: "scroll-hide" });
    const info = el(doc, "div", { id: `generation_info_${tab}`, class: "block hidden" }, [el(doc, "label", {}, [textarea])]);
    const htmlInfo = el(doc, "div", { id: `html_info_${tab}`, class: "infotext" });
    const panel = el(doc, "div", { id: `${tab}_results_panel` }, [container, buttons, el(doc, "div", {}, [htmlInfo, info])]);
    return el(doc, "div", { id: `tab_${tab}`, class: "tabitem", style: "display: block;" }, [panel]);
}

/** A jsdom page with both tabs' output panels inside a gradio-app root. */
function makePage() {
    const dom = new JSDOM("<!doctype html><html><head></head><body><gradio-app><div class=\"gradio-container\"></div></gradio-app></body></html>", {
        runScripts: "outside-only",
        pretendToBeVisual: true,
    });
    const doc = dom.window.document;
    const container = doc.querySelector(".gradio-container");
    container.appendChild(outputPanel(doc, "txt2img"));
    container.appendChild(outputPanel(doc, "img2img"));
    return {
        dom,
        window: dom.window,
        document: doc,
        gallery: (tab = "txt2img") => doc.getElementById(`${tab}_gallery`),
        textarea: (tab = "txt2img") => doc.querySelector(`#generation_info_${tab} textarea`),
    };
}

/**
 * Installs stand-ins for the WebUI's helpers on the page's window, then evaluates the extension script there as a
 * classic script. Returns the registered callbacks so a test can play the WebUI's part.
 */
function loadScriptInPage(page, { helpers = true, opts = {} } = {}) {
    const w = page.window;
    const callbacks = { afterUiUpdate: [], uiLoaded: [], optionsChanged: [] };
    if (helpers) {
        w.eval(`
            window.__callbacks = { afterUiUpdate: [], uiLoaded: [], optionsChanged: [] };
            function gradioApp() { return document.querySelector("gradio-app"); }
            function onAfterUiUpdate(cb) { window.__callbacks.afterUiUpdate.push(cb); }
            function onUiLoaded(cb) { window.__callbacks.uiLoaded.push(cb); }
            function onOptionsChanged(cb) { window.__callbacks.optionsChanged.push(cb); }
            var opts = {};
        `);
        Object.assign(w.opts, opts);
        Object.assign(callbacks, w.__callbacks);
    }
    const errors = [];
    const originalError = w.console.error;
    w.console.error = (...args) => { errors.push(args); originalError.apply(w.console, args); };
    const before = new Set(Object.getOwnPropertyNames(w));
    w.eval(SCRIPT_SOURCE);
    const added = Object.getOwnPropertyNames(w).filter((name) => !before.has(name));
    return { callbacks, errors, addedGlobals: added, api: w.imageRewardOverlay };
}

// The scorers' table as the Python side writes it (imagereward/scorers/specs.py front_end_table()).
const SCORERS_FIXTURE = path.resolve(__dirname, "..", "fixtures", "scorers.json");
const SCORERS = JSON.parse(fs.readFileSync(SCORERS_FIXTURE, "utf8"));

/**
 * Processed.js()-like info. images: [{score, rank, group, groupSize, best, members}] for gallery indices
 * first..first+n-1. scorer: a label of SCORERS, written as the Python side does ("ImageReward scorer: <label>" unless
 * ImageReward, the score under the scorer's key with its digits, an ensemble's members ({label: score}) under theirs,
 * summary.scorer / score_key); left out: an infotext as written before there was a choice (ImageReward, no scorer).
 */
function makeInfo({ images, grid = false, details = true, infotextScores = true, summary, scorer, weights } = {}) {
    const first = grid ? 1 : 0;
    const infotexts = [];
    const seeds = [];
    const spec = SCORERS[scorer || "ImageReward"];
    images.forEach((img, i) => {
        const seed = 1000 + i;
        seeds.push(seed);
        const settings = [`Steps: 20`, `Sampler: Euler a`, `CFG scale: 7`, `Seed: ${seed}`, `Size: 512x512`, `Model: test`];
        if (scorer && scorer !== "ImageReward") settings.push(`ImageReward scorer: ${scorer}`);
        if (weights) settings.push(`ImageReward weights: "${weights}"`);
        if (infotextScores && img.score !== undefined) {
            settings.push(`${spec.key}: ${img.score.toFixed(spec.digits)}`);
            for (const [label, value] of Object.entries(img.members || {}).sort()) {
                settings.push(`${SCORERS[label].key}: ${value.toFixed(SCORERS[label].digits)}`);
            }
        }
        infotexts.push(`a photo of a cat\nNegative prompt: blurry\n${settings.join(", ")}`);
    });
    if (grid) infotexts.unshift(infotexts[0]);
    const extra = { "Model": "test" };
    if (details) {
        extra["ImageReward details"] = {
            version: 1,
            images: images.map((img, i) => ({
                index: first + i,
                score: img.score,
                group: img.group ?? 0,
                rank: img.rank,
                group_size: img.groupSize,
                best: img.best ?? img.rank === 1,
            })),
            summary: summary ?? {
                scored: 16, kept: images.length, discarded: 16 - images.length,
                min: -1.234, max: Math.max(...images.map((x) => x.score)),
                mode: "top-k", threshold: null, fallback: false,
                ...(scorer ? { scorer: spec.name, score_key: spec.key } : {}),
            },
        };
    }
    return {
        prompt: "a photo of a cat",
        all_prompts: images.map(() => "a photo of a cat"),
        all_seeds: seeds,
        seed: seeds[0],
        index_of_first_image: first,
        infotexts,
        extra_generation_params: extra,
        job_timestamp: "20250101000000",
    };
}

const FOUR = [
    { score: 0.8123, rank: 1, groupSize: 4, group: 0 },
    { score: -0.4217, rank: 3, groupSize: 4, group: 0 },
    { score: 1.95, rank: 1, groupSize: 4, group: 1 },
    { score: -2.5, rank: 4, groupSize: 4, group: 1 },
];

/** Records DOM mutations under `root` until `stop()`; stop() resolves with the records (after the microtask flush). */
function recordMutations(window, root) {
    const records = [];
    const observer = new window.MutationObserver((list) => records.push(...list));
    observer.observe(root, { subtree: true, childList: true, attributes: true, characterData: true });
    return {
        async stop() {
            await new Promise((resolve) => setTimeout(resolve, 0));
            records.push(...observer.takeRecords());
            observer.disconnect();
            return records;
        },
    };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const STYLE_CSS = fs.readFileSync(path.resolve(__dirname, "..", "..", "style.css"), "utf8");

/**
 * Gives a page's thumbnails the extension's stylesheet, the given object-fit / object-position on their pictures, and
 * the layout a browser would measure (jsdom has none): each <img> fills its cell (its offsetParent) of size `cell`
 * and has the natural size `natural`. Returns the imgs; their sizes stay writable.
 */
function layOutThumbnails(page, gallery, { fit, position, cell = [208, 416], natural }) {
    const sheet = page.document.createElement("style");
    sheet.textContent = `${STYLE_CSS}\n.thumbnail-item img { object-fit: ${fit}; object-position: ${position}; }`;
    page.document.head.appendChild(sheet);
    const images = Array.from(gallery.querySelectorAll(".thumbnail-item img"));
    for (const img of images) {
        const host = img.parentNode;
        const value = (v) => ({ value: v, configurable: true, writable: true });
        Object.defineProperties(img, {
            offsetParent: { get: () => host, configurable: true },
            offsetLeft: value(0), offsetTop: value(0), clientLeft: value(0), clientTop: value(0),
            clientWidth: value(cell[0]), clientHeight: value(cell[1]),
            naturalWidth: value(natural[0]), naturalHeight: value(natural[1]),
        });
    }
    return images;
}

module.exports = {
    SCRIPT_PATH, SCRIPT_SOURCE, FOUR, SCORERS, SCORERS_FIXTURE,
    makePage, renderGallery, selectInGallery, loadScriptInPage, makeInfo, recordMutations, sleep, layOutThumbnails,
};
