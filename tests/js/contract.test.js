"use strict";
// The generation info the Python side writes (tests/fixtures/generation_info*.json, produced and checked by
// tests/test_webui_host.py from real jobs under the stand-in WebUI: ImageReward, PickScore and an ensemble) and its
// table of scorers (tests/fixtures/scorers.json, from imagereward/scorers/specs.py front_end_table()): the front end
// must read them as the Python side means them. If either side changes the contract, one of the two tests fails.

const test = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const ir = require("../../javascript/imagereward.js");

const FIXTURES = path.resolve(__dirname, "..", "fixtures");
const SCORERS = JSON.parse(fs.readFileSync(path.join(FIXTURES, "scorers.json"), "utf8"));
const JOBS = ["generation_info.json", "generation_info_pickscore.json", "generation_info_ensemble.json"];
const DASH = "\u2014";

function load(name) {
    return JSON.parse(fs.readFileSync(path.join(FIXTURES, name), "utf8"));
}

/** The table's label for a scorer's name (the details' summary.scorer). */
function labelOf(name) {
    const label = Object.keys(SCORERS).find((l) => SCORERS[l].name === name);
    assert.ok(label, `scorer ${name} is in the table`);
    return label;
}

/** The number after "<key>: " on an infotext's last line, read here independently of the front end's parser. */
function written(infotext, key) {
    const line = infotext.trim().split("\n").pop();
    const match = line.match(new RegExp(`(?:^|, )${key.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}: ([^,]+)`));
    return match ? match[1] : null;
}

test("the front end's table of scorers is the Python side's", () => {
    assert.deepEqual(ir.logic.SCORERS, SCORERS);
});

test("the fixtures cover ImageReward (no scorer entry), PickScore and an ensemble", () => {
    const scorers = JOBS.map((name) => load(name).extra_generation_params["ImageReward details"].summary.scorer);
    assert.deepEqual(scorers, ["imagereward", "pickscore", "ensemble"]);
    assert.ok(!load(JOBS[0]).infotexts.some((t) => t.includes("ImageReward scorer:")), "ImageReward's infotexts name no scorer");
});

for (const name of JOBS) {
    const info = load(name);
    const details = info.extra_generation_params["ImageReward details"];
    const label = labelOf(details.summary.scorer);
    const spec = SCORERS[label];

    test(`${name}: one badge per kept image, with the infotext's ${label} score, rank and group`, () => {
        assert.equal(details.summary.score_key, spec.key);
        const parsed = ir.parseGenerationInfo(JSON.stringify(info));
        const first = info.index_of_first_image;
        assert.equal(parsed.firstIndex, first);
        assert.equal(parsed.count, info.infotexts.length - first);
        for (const entry of details.images) {
            const image = parsed.images[entry.index];
            const text = written(info.infotexts[entry.index], spec.key);
            assert.ok(text, `the infotext writes ${spec.key}`);
            assert.equal(text.split(".")[1].length, spec.digits, "written with the scorer's digits");
            assert.equal(image.score, Number(text));
            assert.equal(image.score, ir.parseInfotextScore(info.infotexts[entry.index]));
            assert.equal(image.scorer, label);
            assert.equal(image.digits, spec.digits);
            assert.equal(image.source, "details");
            assert.equal(image.rank, entry.rank);
            assert.equal(image.groupSize, entry.group_size);
            assert.equal(image.best, entry.best);
        }
        assert.equal(parsed.summary.kept, details.summary.kept);
        assert.equal(parsed.summary.scored, details.summary.scored);
        assert.equal(parsed.summary.mode, details.summary.mode);
        assert.equal(parsed.summary.scorer, label);
    });

    test(`${name}: badge text, colour, tooltip and summary of a ${label} job`, () => {
        const parsed = ir.parseGenerationInfo(info);
        const entry = details.images[0];
        const image = parsed.images[entry.index];
        const shown = written(info.infotexts[entry.index], spec.key);
        const head = label === "ImageReward" ? `ImageReward score ${shown}` : `${label} ${shown}`;
        const tooltip = ir.badgeTooltip(image);
        assert.ok(tooltip.startsWith(head), tooltip);
        assert.ok(tooltip.endsWith(`${DASH} rank 1 of ${entry.group_size} in its group ${DASH} best`), tooltip);
        assert.equal(ir.scoreColor(image.score, image.scorer), ir.scoreColor(image.score, spec.colours));
        const summary = ir.summaryText(parsed.summary);
        assert.ok(summary.startsWith(label === "ImageReward" ? "ImageReward: " : `ImageReward \u00b7 ${label}: `), summary);
        assert.match(summary, new RegExp(`${details.summary.scored} candidates scored, ${details.summary.kept} kept`));
    });
}

test("the ensemble's members: each under its own key, in the order of its weights, in the tooltip", () => {
    const info = load("generation_info_ensemble.json");
    const weights = info.extra_generation_params["ImageReward weights"];
    const order = weights.split(",").map((part) => labelOf(part.split("=")[0]));
    const parsed = ir.parseGenerationInfo(info);
    for (let k = info.index_of_first_image; k < info.infotexts.length; k++) {
        const members = parsed.images[k].members;
        assert.deepEqual(members.map((m) => m.scorer), order);
        for (const member of members) {
            const text = written(info.infotexts[k], SCORERS[member.scorer].key);
            assert.equal(member.score, Number(text));
            assert.equal(member.digits, SCORERS[member.scorer].digits);
        }
        const inner = members.map((m) => `${m.scorer} ${written(info.infotexts[k], SCORERS[m.scorer].key)}`).join(", ");
        assert.ok(ir.badgeTooltip(parsed.images[k]).includes(`(${inner})`));
        // the ImageReward member is not the badge's score
        assert.notEqual(parsed.images[k].score, Number(written(info.infotexts[k], "ImageReward")));
    }
});

test("a grid inserted later (the prompt matrix) moves gallery indices: positions still find their images", () => {
    for (const name of JOBS) {
        const moved = load(name);
        moved.infotexts.splice(moved.index_of_first_image, 0, "the prompt matrix's grid");
        moved.index_of_first_image += 1;
        const parsed = ir.parseGenerationInfo(moved);
        const details = moved.extra_generation_params["ImageReward details"];
        for (const entry of details.images) {
            const image = parsed.images[moved.index_of_first_image + entry.position];
            assert.equal(image.source, "details", name);
            assert.equal(image.rank, entry.rank);
        }
    }
});

test("generation_info_unfinished.json: the kept image has its score, the interrupted one a plain label", () => {
    const info = load("generation_info_unfinished.json");
    const parsed = ir.parseGenerationInfo(JSON.stringify(info));
    const first = info.index_of_first_image;
    const kept = parsed.images[first];
    const unfinished = parsed.images[first + 1];
    assert.equal(kept.score, Number(written(info.infotexts[first], "ImageReward")));
    assert.equal(kept.rank, 1);
    assert.equal(unfinished.score, null);
    assert.equal(unfinished.status, "unfinished \u00b7 not saved");
    assert.equal(unfinished.best, false);
    assert.equal(unfinished.rank, null);
    assert.match(ir.logic.badgeTooltip(unfinished), /not saved .* not ranked/);
    assert.equal(parsed.summary.scored, 2);
});
