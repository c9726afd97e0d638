"use strict";
// The generation info the Python side writes (tests/fixtures/generation_info.json, produced and checked by
// tests/test_webui_host.py from a real job under the stand-in WebUI): the front end must read it as the Python
// side means it. If either side changes the contract, one of the two tests fails.

const test = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const ir = require("../../javascript/imagereward.js");

const FIXTURE = path.resolve(__dirname, "..", "fixtures", "generation_info.json");
const info = JSON.parse(fs.readFileSync(FIXTURE, "utf8"));

test("the Python job's generation info: one badge per kept image, with the infotext's score, rank and group", () => {
    const parsed = ir.parseGenerationInfo(JSON.stringify(info));
    const first = info.index_of_first_image;
    assert.equal(parsed.firstIndex, first);
    assert.equal(parsed.count, info.infotexts.length - first);
    const details = info.extra_generation_params["ImageReward details"];
    for (const entry of details.images) {
        const image = parsed.images[entry.index];
        assert.equal(image.score, ir.parseInfotextScore(info.infotexts[entry.index]));
        assert.equal(image.source, "details");
        assert.equal(image.rank, entry.rank);
        assert.equal(image.groupSize, entry.group_size);
        assert.equal(image.best, entry.best);
    }
    assert.equal(parsed.summary.kept, details.summary.kept);
    assert.equal(parsed.summary.scored, details.summary.scored);
    assert.equal(parsed.summary.mode, details.summary.mode);
});

test("a grid inserted later (the prompt matrix) moves gallery indices: positions still find their images", () => {
    const moved = JSON.parse(JSON.stringify(info));
    moved.infotexts.splice(moved.index_of_first_image, 0, "the prompt matrix's grid");
    moved.index_of_first_image += 1;
    const parsed = ir.parseGenerationInfo(moved);
    const details = moved.extra_generation_params["ImageReward details"];
    for (const entry of details.images) {
        const image = parsed.images[moved.index_of_first_image + entry.position];
        assert.equal(image.source, "details");
        assert.equal(image.rank, entry.rank);
    }
});
