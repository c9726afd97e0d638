"use strict";
// Pure logic of javascript/imagereward.js, loaded with require() as Node sees it (no DOM, no WebUI helpers).

const test = require("node:test");
const assert = require("node:assert/strict");
const { makeInfo, FOUR, SCRIPT_PATH } = require("./helpers");

const ir = require(SCRIPT_PATH);
const MINUS = "\u2212";
// what every entry of an ImageReward job (or an infotext without the scorer entry) carries besides its numbers
const IR = { scorer: "ImageReward", digits: 3, members: [] };

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
    assert.deepEqual(parsed.images[0], { score: 0.812, rank: 1, groupSize: 4, group: 0, best: true, source: "details", ...IR });
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
    assert.deepEqual(parsed.images[1], { score: 0.812, rank: null, groupSize: null, group: null, best: false, source: "infotext", ...IR });
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
    assert.deepEqual(parsed.images[0], { score: 0.812, rank: null, groupSize: null, group: null, best: false, source: "details", ...IR });
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
    assert.deepEqual(parsed.images[0], { score: 0.812, rank: null, groupSize: null, group: null, best: false, source: "infotext", ...IR });
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

// ---------------------------------------------------------------------------------------------------------------
// Scorers: the infotext's scorer picks the key, the digits, the colour range and the names shown
// ---------------------------------------------------------------------------------------------------------------

const { SCORERS } = require("./helpers");
const DASH = "\u2014";
const S = "Steps: 20, Sampler: Euler a, Seed: 5";

test("SCORERS equals the Python side's table (tests/fixtures/scorers.json, from specs.py front_end_table())", () => {
    assert.deepEqual(ir.logic.SCORERS, SCORERS);
    assert.ok(Object.keys(SCORERS).length >= 7);
});

test("the infotext's scorer picks the key: 'ImageReward scorer: <label>' -> that scorer's key; absent -> ImageReward", () => {
    // an old infotext (no scorer entry) keeps working
    assert.deepEqual(ir.readInfotext(`cat\n${S}, ImageReward: 0.812`), { score: 0.812, scorer: "ImageReward", digits: 3, members: [] });
    assert.deepEqual(ir.readInfotext(`cat\n${S}, ImageReward scorer: PickScore, PickScore: 21.312`),
        { score: 21.312, scorer: "PickScore", digits: 3, members: [] });
    assert.deepEqual(ir.readInfotext(`cat\n${S}, ImageReward scorer: HPSv2.1, HPSv2-1: 0.2714`),
        { score: 0.2714, scorer: "HPSv2.1", digits: 4, members: [] });
    assert.equal(ir.parseInfotextScore(`cat\n${S}, ImageReward scorer: CLIP, CLIP score: 0.2791`), 0.2791);
    assert.equal(ir.parseInfotextScore(`cat\n${S}, ImageReward scorer: Aesthetic, Aesthetic score: 5.812`), 5.812);
    assert.equal(ir.parseInfotextScore(`cat\n${S}, ImageReward scorer: BLIP, BLIP score: 0.4412`), 0.4412);
    // another key's number is never taken for the scorer's: an ImageReward value beside a PickScore job
    assert.equal(ir.parseInfotextScore(`cat\n${S}, ImageReward scorer: PickScore, ImageReward: 0.5`), null);
    assert.equal(ir.parseInfotextScore(`cat\n${S}, ImageReward: 0.5, ImageReward scorer: PickScore, PickScore: 22.5`), 22.5);
    // a scorer written some other way: the label quoted, or its name
    assert.equal(ir.parseInfotextScore(`cat\n${S}, ImageReward scorer: "PickScore", PickScore: 20.000`), 20);
    assert.equal(ir.parseInfotextScore(`cat\n${S}, ImageReward scorer: hpsv2.1, HPSv2-1: 0.3000`), 0.3);
    // ImageReward named explicitly
    assert.equal(ir.parseInfotextScore(`cat\n${S}, ImageReward scorer: ImageReward, ImageReward: 0.25`), 0.25);
});

test("an unknown scorer label gives no score (no badge), not the ImageReward key's number", () => {
    assert.equal(ir.readInfotext(`cat\n${S}, ImageReward scorer: HPSv3, ImageReward: 0.5, HPSv3: 9.1`), null);
    assert.equal(ir.parseInfotextScore(`cat\n${S}, ImageReward scorer: , ImageReward: 0.5`), null);
    const info = ir.parseGenerationInfo({
        index_of_first_image: 0,
        infotexts: [`cat\n${S}, ImageReward scorer: FutureScore, FutureScore: 3.2, ImageReward: 0.5`],
    });
    assert.equal(info, null);
});

test("an ensemble's infotext: its own score, and each member's in the order of its weights", () => {
    const line = `cat\n${S}, ImageReward scorer: Ensemble, ImageReward weights: "imagereward=1,hpsv2.1=2", ` +
        "Ensemble: 3.098, HPSv2-1: 0.3389, ImageReward: 3.443";
    assert.deepEqual(ir.readInfotext(line), {
        score: 3.098, scorer: "Ensemble", digits: 3,
        members: [{ scorer: "ImageReward", score: 3.443, digits: 3 }, { scorer: "HPSv2.1", score: 0.3389, digits: 4 }],
    });
    assert.equal(ir.parseInfotextScore(line), 3.098, "the ensemble's score, not its ImageReward member's");
    // the weights in another order; no weights at all: the table's order
    const swapped = line.replace("imagereward=1,hpsv2.1=2", "hpsv2.1=2,imagereward=1");
    assert.deepEqual(ir.readInfotext(swapped).members.map((m) => m.scorer), ["HPSv2.1", "ImageReward"]);
    const bare = `cat\n${S}, ImageReward scorer: Ensemble, PickScore: 21.000, Ensemble: 0.100, ImageReward: 0.410`;
    assert.deepEqual(ir.readInfotext(bare).members.map((m) => m.scorer), ["ImageReward", "PickScore"]);
    // a member without a number is left out
    assert.deepEqual(ir.readInfotext(line.replace("HPSv2-1: 0.3389", "HPSv2-1: n/a")).members.map((m) => m.scorer), ["ImageReward"]);
    // a single scorer has no members, whatever else the line holds
    assert.deepEqual(ir.readInfotext(`cat\n${S}, ImageReward scorer: PickScore, PickScore: 21.0, ImageReward: 1`).members, []);
});

test("parseGenerationInfo: entries carry the scorer's label and digits; details add rank where they agree", () => {
    const images = [
        { score: 26.1638, rank: 1, groupSize: 4 },
        { score: 21.6517, rank: 4, groupSize: 4 },
    ];
    const parsed = ir.parseGenerationInfo(makeInfo({ images, scorer: "PickScore" }));
    assert.deepEqual(parsed.images[0], {
        score: 26.164, rank: 1, groupSize: 4, group: 0, best: true, source: "details",
        scorer: "PickScore", digits: 3, members: [],
    });
    assert.equal(parsed.images[1].score, 21.652);
    assert.equal(parsed.summary.scorer, "PickScore");
    assert.equal(parsed.summary.digits, 3);

    const hps = ir.parseGenerationInfo(makeInfo({ images: [{ score: 0.27144, rank: 1, groupSize: 2 }], scorer: "HPSv2.1" }));
    assert.equal(hps.images[0].score, 0.2714);
    assert.equal(hps.images[0].digits, 4);
    assert.equal(hps.images[0].source, "details");

    const ens = ir.parseGenerationInfo(makeInfo({
        images: [{ score: 0.8123, rank: 1, groupSize: 4, members: { "ImageReward": 0.41, "HPSv2.1": 0.27144 } }],
        scorer: "Ensemble", weights: "imagereward=1,hpsv2.1=2",
    }));
    assert.deepEqual(ens.images[0].members, [
        { scorer: "ImageReward", score: 0.41, digits: 3 }, { scorer: "HPSv2.1", score: 0.2714, digits: 4 },
    ]);
    assert.equal(ens.images[0].score, 0.812);
    assert.equal(ens.images[0].rank, 1);
});

test("agreement follows the digits: half a unit of the infotext's last digit plus the details' rounding", () => {
    assert.ok(Math.abs(ir.logic.agreementTolerance(3) - 0.00055) < 1e-8);
    assert.ok(Math.abs(ir.logic.agreementTolerance(4) - 0.0001) < 1e-8);
    const agrees = (scorer, details, written) => {
        const info = makeInfo({ images: [{ score: written, rank: 1, groupSize: 4 }], scorer });
        info.extra_generation_params["ImageReward details"].images[0].score = details;
        return ir.parseGenerationInfo(info).images[0].source === "details";
    };
    // 3 decimals written (ImageReward, PickScore): 0.0005 apart is the same score, 0.0007 is not
    assert.equal(agrees("ImageReward", 0.8125, 0.812), true);
    assert.equal(agrees("ImageReward", 0.8127, 0.812), false);
    assert.equal(agrees("PickScore", 26.1645, 26.164), true);
    assert.equal(agrees("PickScore", 26.1647, 26.164), false);
    // 4 decimals written (HPSv2.1, CLIP, BLIP): 0.0006 apart is another score (ImageReward's 0.0006 would accept it)
    assert.equal(agrees("HPSv2.1", 0.2714, 0.2714), true);
    assert.equal(agrees("HPSv2.1", 0.2715, 0.2714), true);
    assert.equal(agrees("HPSv2.1", 0.2717, 0.2714), false);
    assert.equal(agrees("HPSv2.1", 0.2720, 0.2714), false);
    assert.equal(agrees("CLIP", 0.2793, 0.2791), false);
    assert.equal(agrees("BLIP", 0.4406, 0.4412), false);
});

test("details of another scorer (an X/Y/Z grid over scorers) add nothing to the infotext's score", () => {
    const info = makeInfo({ images: FOUR });
    const summary = info.extra_generation_params["ImageReward details"].summary;
    summary.scorer = "ensemble"; // same numbers, other scorer: not this image's ranking
    const parsed = ir.parseGenerationInfo(info);
    assert.equal(parsed.images[0].source, "infotext");
    assert.equal(parsed.images[0].rank, null);
    summary.scorer = "imagereward";
    assert.equal(ir.parseGenerationInfo(info).images[0].source, "details");
    // details written before there was a choice (no scorer) are ImageReward's
    delete summary.scorer;
    assert.equal(ir.parseGenerationInfo(info).images[0].source, "details");
});

test("details without infotexts: the summary's scorer labels the entries; an unknown one gives no badge", () => {
    const info = makeInfo({ images: [{ score: 0.27144, rank: 1, groupSize: 2 }], scorer: "HPSv2.1" });
    delete info.infotexts;
    const parsed = ir.parseGenerationInfo(info);
    assert.equal(parsed.images[0].scorer, "HPSv2.1");
    assert.equal(parsed.images[0].digits, 4);
    info.extra_generation_params["ImageReward details"].summary.scorer = "hpsv9";
    const unknown = ir.parseGenerationInfo(info);
    assert.equal(unknown.count, 0);
    assert.deepEqual(unknown.images, {});
    assert.equal(unknown.summary.scorer, "hpsv9");
    // score_key alone (no name) is enough
    delete info.extra_generation_params["ImageReward details"].summary.scorer;
    assert.equal(ir.parseGenerationInfo(info).images[0].scorer, "HPSv2.1");
});

test("colour on the scorer's own range: red at its first value, amber halfway, green at its second", () => {
    assert.equal(ir.scoreHue(18, "PickScore"), 0);
    assert.equal(ir.scoreHue(21, "PickScore"), 40);
    assert.equal(ir.scoreHue(24, "PickScore"), 120);
    assert.equal(ir.scoreHue(22.5, "PickScore"), 80);
    assert.equal(ir.scoreColor(30, "PickScore"), "hsl(120, 90%, 55%)");
    assert.equal(ir.scoreColor(0.26, "HPSv2.1"), "hsl(40, 90%, 55%)");
    assert.equal(ir.scoreHue(0.35, "CLIP"), 120);
    assert.equal(ir.scoreHue(4, "Aesthetic"), 0);
    assert.equal(ir.scoreHue(0.4, "BLIP"), 40);
    // a PickScore of 0.81 would be green on ImageReward's range: red on its own
    assert.notEqual(ir.scoreColor(0.81, "PickScore"), ir.scoreColor(0.81));
    // ImageReward (and the ensemble, a weighted mean of z-scores) as before
    for (const s of [-3, -2, -1, 0, 0.5, 1, 2, 3]) {
        assert.equal(ir.scoreHue(s, "ImageReward"), ir.scoreHue(s));
        assert.equal(ir.scoreHue(s, "Ensemble"), ir.scoreHue(s));
    }
    assert.equal(ir.scoreHue(1, "ImageReward"), 80);
    let previous = -1;
    for (let s = 0.1; s <= 0.4; s += 0.01) {
        const hue = ir.scoreHue(s, "HPSv2.1");
        assert.ok(hue >= previous, `hue not decreasing at ${s}`);
        previous = hue;
    }
});

test("badgeTooltip names the scorer, with its digits; an ensemble's members follow its score", () => {
    assert.equal(ir.badgeTooltip({ score: 21.3124, rank: 1, groupSize: 4, best: true, scorer: "PickScore", digits: 3 }),
        `PickScore 21.312 ${DASH} rank 1 of 4 in its group ${DASH} best`);
    assert.equal(ir.badgeTooltip({ score: 0.27144, rank: 2, groupSize: 4, best: false, scorer: "HPSv2.1", digits: 4 }),
        `HPSv2.1 0.2714 ${DASH} rank 2 of 4 in its group`);
    assert.equal(ir.badgeTooltip({
        score: 0.812, rank: 1, groupSize: 4, best: true, scorer: "Ensemble", digits: 3,
        members: [{ scorer: "ImageReward", score: 0.41, digits: 3 }, { scorer: "HPSv2.1", score: 0.2714, digits: 4 }],
    }), `Ensemble 0.812 (ImageReward 0.410, HPSv2.1 0.2714) ${DASH} rank 1 of 4 in its group ${DASH} best`);
    assert.equal(ir.badgeTooltip({ score: -0.5, rank: null, groupSize: null, best: false, scorer: "ImageReward", digits: 3, members: [] }),
        `ImageReward score ${MINUS}0.500`);
    // from a parsed infotext
    const parsed = ir.parseGenerationInfo(makeInfo({ images: [{ score: 5.8123, rank: 1, groupSize: 1 }], scorer: "Aesthetic" }));
    assert.equal(ir.badgeTooltip(parsed.images[0]), `Aesthetic 5.812 ${DASH} the only candidate in its group`);
});

test("summaryText names the scorer when it is not ImageReward, its range one decimal short of the scorer's", () => {
    const base = { scored: 16, kept: 4, discarded: 12, min: 21.6515, max: 26.8568, fallback: false };
    assert.equal(ir.summaryText({ ...base, scorer: "PickScore" }),
        "ImageReward \u00b7 PickScore: 16 candidates scored, 4 kept, 12 discarded \u00b7 scores 21.65 \u2026 26.86");
    assert.equal(ir.summaryText({ ...base, scorer: "pickscore" }), ir.summaryText({ ...base, scorer: "PickScore" }));
    assert.equal(ir.summaryText({ scored: 4, kept: 1, min: 0.2012, max: 0.3481, scorer: "HPSv2.1", threshold: 0.35, fallback: true }),
        "ImageReward \u00b7 HPSv2.1: 4 candidates scored, 1 kept, 3 discarded \u00b7 scores 0.201 \u2026 0.348" +
        " \u00b7 no candidate reached the threshold (0.350), so the best was kept anyway");
    assert.match(ir.summaryText({ ...base, scorer: "Ensemble" }), /^ImageReward \u00b7 Ensemble: /);
    // ImageReward, named or not: as before
    assert.equal(ir.summaryText({ scored: 8, kept: 2, scorer: "ImageReward" }), "ImageReward: 8 candidates scored, 2 kept, 6 discarded");
    assert.equal(ir.summaryText({ scored: 8, kept: 2, scorer: "imagereward" }), "ImageReward: 8 candidates scored, 2 kept, 6 discarded");
    // parsed from the details' summary (its scorer's name)
    const info = makeInfo({ images: [{ score: 26.1638, rank: 1, groupSize: 4 }], scorer: "PickScore",
        summary: { scored: 16, kept: 4, discarded: 12, min: 21.6515, max: 26.8568, mode: "top-k", scorer: "pickscore", score_key: "PickScore" } });
    assert.equal(ir.summaryText(ir.parseGenerationInfo(info).summary),
        "ImageReward \u00b7 PickScore: 16 candidates scored, 4 kept, 12 discarded \u00b7 scores 21.65 \u2026 26.86");
});

// ---------------------------------------------------------------------------------------------------------------
// Where a thumbnail's picture is drawn in its <img> box (object-fit / object-position)
// ---------------------------------------------------------------------------------------------------------------

/** Compares a pictureRect() result with the expected one, to a thousandth of a px. */
function assertRect(actual, expected, message) {
    assert.deepEqual(Object.keys(actual).sort(), ["height", "left", "top", "width"], message);
    for (const key of Object.keys(expected)) {
        assert.ok(Math.abs(actual[key] - expected[key]) < 1e-3, `${message}: ${key} ${actual[key]} != ${expected[key]}`);
    }
}

test("pictureRect, scale-down at 50% 0% (SD.Next's thumbnails): a small picture at natural size, centred at the top", () => {
    const rect = ir.logic.pictureRect;
    assertRect(rect(207, 416, 64, 64, "scale-down", "50% 0%"), { left: 71.5, top: 0, width: 64, height: 64 }, "64x64");
    assertRect(rect(207, 416, 128, 256, "scale-down", "50% 0%"), { left: 39.5, top: 0, width: 128, height: 256 }, "128x256");
    // a large portrait picture is scaled down to the cell's height, centred between empty bands
    assertRect(rect(207, 416, 600, 1600, "scale-down", "50% 0%"), { left: 25.5, top: 0, width: 156, height: 416 }, "600x1600");
    // a large one as wide as the cell relative to its height starts at the corner
    assertRect(rect(207, 416, 512, 768, "scale-down", "50% 0%"), { left: 0, top: 0, width: 207, height: 310.5 }, "512x768");
});

test("pictureRect, contain: a landscape picture fills the width, centred at 50% 50% or placed by keywords", () => {
    const rect = ir.logic.pictureRect;
    assertRect(rect(200, 400, 512, 256, "contain", "50% 50%"), { left: 0, top: 150, width: 200, height: 100 }, "50% 50%");
    assertRect(rect(200, 400, 512, 256, "contain", "center"), { left: 0, top: 150, width: 200, height: 100 }, "center");
    assertRect(rect(200, 400, 512, 256, "contain", "left bottom"), { left: 0, top: 300, width: 200, height: 100 }, "left bottom");
    assertRect(rect(200, 400, 512, 256, "contain", "bottom left"), { left: 0, top: 300, width: 200, height: 100 }, "bottom left");
    assertRect(rect(400, 200, 100, 100, "contain", "right top"), { left: 200, top: 0, width: 200, height: 200 }, "right top");
    // unlike scale-down, contain enlarges a small picture
    assertRect(rect(200, 400, 64, 32, "contain", "50% 0%"), { left: 0, top: 0, width: 200, height: 100 }, "enlarged");
});

test("pictureRect, cover and fill: the whole box (cover's overflow is clipped)", () => {
    const rect = ir.logic.pictureRect;
    const box = { left: 0, top: 0, width: 207, height: 416 };
    assertRect(rect(207, 416, 512, 768, "cover", "50% 50%"), box, "cover 512x768");
    assertRect(rect(207, 416, 64, 64, "cover", "50% 0%"), box, "cover 64x64");
    assertRect(rect(207, 416, 128, 256, "fill", "50% 0%"), box, "fill");
});

test("pictureRect, none: the natural size at a px position, clipped to the box", () => {
    const rect = ir.logic.pictureRect;
    assertRect(rect(207, 416, 64, 64, "none", "10px 20px"), { left: 10, top: 20, width: 64, height: 64 }, "10px 20px");
    assertRect(rect(207, 416, 64, 64, "none", "0 0"), { left: 0, top: 0, width: 64, height: 64 }, "0 0");
    assertRect(rect(100, 100, 300, 500, "none", "50% 50%"), { left: 0, top: 0, width: 100, height: 100 }, "larger than the box");
    assertRect(rect(100, 100, 64, 64, "none", "90px 0px"), { left: 90, top: 0, width: 10, height: 64 }, "partly outside");
});

test("pictureRect: unknown values and a picture not loaded yet give the whole box (the cell's corner, as before)", () => {
    const rect = ir.logic.pictureRect;
    const box = { left: 0, top: 0, width: 207, height: 416 };
    for (const [fit, position] of [
        ["bogus", "50% 0%"], [undefined, "50% 0%"], ["", "50% 0%"],
        ["scale-down", "calc(50% + 10px) 0%"], ["scale-down", "left right"], ["scale-down", "top bottom"],
        ["scale-down", "1 2"], ["scale-down", "50% 0% 10px"], ["scale-down", "right 10px bottom 20px"],
        ["scale-down", "10em 0"], ["scale-down", ""], ["scale-down", null], ["scale-down", 50], ["scale-down", "constructor"],
    ]) {
        assertRect(rect(207, 416, 64, 64, fit, position), box, `${fit} / ${position}`);
    }
    assertRect(rect(207, 416, 0, 0, "scale-down", "50% 0%"), box, "not loaded");
    assertRect(rect(207, 416, undefined, 64, "scale-down", "50% 0%"), box, "no natural width");
    assertRect(rect(0, 0, 64, 64, "scale-down", "50% 0%"), { left: 0, top: 0, width: 0, height: 0 }, "an empty box");
    assertRect(rect(NaN, "x", 64, 64, "scale-down", "50% 0%"), { left: 0, top: 0, width: 0, height: 0 }, "garbage box");
});

test("parseObjectPosition reads what getComputedStyle gives and the keyword forms", () => {
    const parse = ir.logic.parseObjectPosition;
    assert.deepEqual(parse("50% 0%"), { x: { axis: null, percent: 50, px: null }, y: { axis: null, percent: 0, px: null } });
    assert.deepEqual(parse("10px 20.5px"),
        { x: { axis: null, percent: null, px: 10 }, y: { axis: null, percent: null, px: 20.5 } });
    assert.deepEqual(parse("-5px 100%").x, { axis: null, percent: null, px: -5 });
    assert.deepEqual(parse("top"), { x: { axis: null, percent: 50, px: null }, y: { axis: "y", percent: 0, px: null } });
    assert.deepEqual(parse("Right  Bottom"),
        { x: { axis: "x", percent: 100, px: null }, y: { axis: "y", percent: 100, px: null } });
    assert.equal(parse("left left"), null);
    assert.equal(parse("50%").y.percent, 50);
});
