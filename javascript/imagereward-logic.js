/*
 * sd-webui-imagereward: the pure part of the gallery overlays (no DOM): reading the generation info and infotexts,
 * numbers, colours and texts, and where a thumbnail's picture is drawn in its cell. The WebUI loads every file of
 * javascript/ in name order, so this one comes before imagereward.js, which draws the badges with it.
 * Global: window.imageRewardLogic; under Node, module.exports.
 *
 * The badge's score is always the one written on the last line of the image's infotext (the one parser of
 * infotexts here), under the key of the infotext's scorer: "ImageReward scorer: <label>" names it (absent: ImageReward,
 * as in every infotext written before there was a choice), SCORERS gives its key ("PickScore: 21.312"). An ensemble's
 * infotext also holds each member's score under the member's own key. extra_generation_params["ImageReward details"]
 * adds rank and group where its score agrees. An image of a batch cut short by an interrupt carries no score but an
 * "ImageReward status" entry ("unfinished · not saved"): its badge is that plain label, grey, never ranked or starred.
 */
(function () {
    "use strict";


    var DETAILS_KEY = "ImageReward details";
    var INFOTEXT_KEY = "ImageReward"; // ImageReward's score key (and the default scorer's label)
    var SCORER_KEY = "ImageReward scorer"; // the job's scorer, by label; written only when not ImageReward
    var WEIGHTS_KEY = "ImageReward weights"; // the ensemble's weights: "imagereward=1,hpsv2.1=2"
    var STATUS_KEY = "ImageReward status"; // an image shown but not ranked nor saved: "unfinished · not saved"
    var DEFAULT_SCORER = "ImageReward";
    var ENSEMBLE = "Ensemble";
    var OPTION_KEY = "imagereward_show_overlays";
    var MIN_SETTINGS = 3; // pairs a last line needs to be a settings line (the WebUI's rule)
    // The last: our folder tab's gallery; "control": SD.Next's Control tab (absent elsewhere, then skipped).
    var TABS = ["txt2img", "img2img", "control", "imagereward_collection"];
    var SCALE_MIN = -2; // ImageReward's colour range (SCORERS.ImageReward.colours)
    var SCALE_MAX = 2;
    var MINUS = "\u2212";
    var STAR = "\u2605";
    var ELLIPSIS = "\u2026";
    var DASH = "\u2014";
    var SCORE_DIGITS = 3; // ImageReward's precision in the infotext (each scorer has its own: SCORERS)
    var DETAILS_DIGITS = 4; // the details object's precision, whatever the scorer

    /**
     * The scorers the Python side offers, by label (the value of the "ImageReward scorer" entry): the infotext key of
     * the score, the scorer's name (the details' summary.scorer), the decimals written, and the colour range [value
     * shown red, value shown green]. Must equal imagereward/scorers/specs.py front_end_table(), which
     * tests/fixtures/scorers.json holds; a JS test compares the two.
     */
    var SCORERS = {
        "ImageReward": {name: "imagereward", key: "ImageReward", digits: 3, colours: [-2, 2]},
        "CLIP": {name: "clip", key: "CLIP score", digits: 4, colours: [0.15, 0.35]},
        "Aesthetic": {name: "aesthetic", key: "Aesthetic score", digits: 3, colours: [4, 7]},
        "BLIP": {name: "blip", key: "BLIP score", digits: 4, colours: [0.25, 0.55]},
        "PickScore": {name: "pickscore", key: "PickScore", digits: 3, colours: [18, 24]},
        "HPSv2.1": {name: "hpsv2.1", key: "HPSv2-1", digits: 4, colours: [0.2, 0.32]},
        "Ensemble": {name: "ensemble", key: "Ensemble", digits: 3, colours: [-2, 2]},
    };

    var CLS_BADGE = "imagereward-badge";
    var CLS_SUMMARY = "imagereward-summary";
    var ID_PREFIX = "imagereward-";

    // ------------------------------------------------------------------------------------------------------------
    // Small value helpers
    // ------------------------------------------------------------------------------------------------------------

    function isObject(value) {
        return value !== null && typeof value === "object" && !Array.isArray(value);
    }

    var NUMBER_RE = /^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$/;

    /** A finite number from a number or a numeric string ("0.81", "-1.2", "\u22121.2"); otherwise null. */
    function toFiniteNumber(value) {
        if (typeof value === "number") {
            return isFinite(value) ? value : null;
        }
        if (typeof value !== "string") {
            return null;
        }
        var text = value.trim().replace(/^\u2212/, "-");
        if (!NUMBER_RE.test(text)) {
            return null;
        }
        var number = Number(text);
        return isFinite(number) ? number : null;
    }

    /** An integer >= min from a number or integer string; otherwise null. */
    function toInteger(value, min) {
        var number = toFiniteNumber(value);
        if (number === null || Math.floor(number) !== number || number < min) {
            return null;
        }
        return number;
    }

    // ------------------------------------------------------------------------------------------------------------
    // Infotext parsing (fallback path)
    // ------------------------------------------------------------------------------------------------------------

    /** The settings line of an infotext: its last non-empty line. */
    function settingsLine(infotext) {
        if (typeof infotext !== "string") {
            return "";
        }
        var lines = infotext.split(/\r?\n/);
        for (var i = lines.length - 1; i >= 0; i--) {
            var line = lines[i].trim();
            if (line) {
                return line;
            }
        }
        return "";
    }

    /**
     * Splits a settings line into its "Key: value" pairs. Values may be double-quoted (and then contain commas,
     * colons and backslash escapes). Returns an array of [key, rawValue] in order; quoted values keep their quotes.
     */
    function splitSettingsLine(line) {
        var pairs = [];
        var n = line.length;
        var i = 0;
        while (i < n) {
            while (i < n && (line.charAt(i) === "," || line.charAt(i) === " ")) {
                i++;
            }
            var colon = line.indexOf(":", i);
            if (colon < 0) {
                break;
            }
            var key = line.slice(i, colon);
            var lastComma = key.lastIndexOf(",");
            if (lastComma >= 0) {
                key = key.slice(lastComma + 1);
            }
            key = key.trim();
            i = colon + 1;
            while (i < n && line.charAt(i) === " ") {
                i++;
            }
            var value;
            if (line.charAt(i) === "\"") {
                var j = i + 1;
                while (j < n && line.charAt(j) !== "\"") {
                    j += line.charAt(j) === "\\" ? 2 : 1;
                }
                value = line.slice(i, Math.min(j + 1, n));
                var next = line.indexOf(",", j + 1);
                i = next < 0 ? n : next + 1;
            } else {
                var comma = line.indexOf(",", i);
                value = line.slice(i, comma < 0 ? n : comma).trim();
                i = comma < 0 ? n : comma + 1;
            }
            if (key) {
                pairs.push([key, value]);
            }
        }
        return pairs;
    }

    /** The "Key: value" pairs of an infotext's settings line, or null when its last line is not one. */
    function settingsPairs(infotext) {
        var pairs = splitSettingsLine(settingsLine(infotext));
        return pairs.length >= MIN_SETTINGS ? pairs : null;
    }

    /** The value of a key among settings pairs (the last one where given twice), unquoted; null when absent. */
    function settingValue(pairs, key) {
        var raw = null;
        for (var i = 0; i < pairs.length; i++) {
            if (pairs[i][0] === key) {
                raw = pairs[i][1];
            }
        }
        if (raw !== null && raw.length >= 2 && raw.charAt(0) === "\"" && raw.charAt(raw.length - 1) === "\"") {
            raw = raw.slice(1, -1);
        }
        return raw;
    }

    // ------------------------------------------------------------------------------------------------------------
    // Scorers
    // ------------------------------------------------------------------------------------------------------------

    function scorerInfo(label) {
        var spec = SCORERS[label];
        return {label: label, name: spec.name, key: spec.key, digits: spec.digits, colours: spec.colours.slice()};
    }

    /**
     * A scorer of SCORERS, {label, name, key, digits, colours}, from its label ("PickScore") or, as a fallback, its
     * label or name in any case ("pickscore", "hpsv2.1"); null for anything else.
     */
    function scorerSpec(value) {
        if (typeof value !== "string") {
            return null;
        }
        var text = value.trim();
        if (Object.prototype.hasOwnProperty.call(SCORERS, text)) {
            return scorerInfo(text);
        }
        var lower = text.toLowerCase();
        for (var label in SCORERS) {
            if (Object.prototype.hasOwnProperty.call(SCORERS, label) &&
                (label.toLowerCase() === lower || SCORERS[label].name === lower)) {
                return scorerInfo(label);
            }
        }
        return null;
    }

    /** The ensemble's members named by its weights text ("imagereward=1,hpsv2.1=2"), in that order, as scorers. */
    function weightedMembers(text) {
        var members = [];
        if (typeof text !== "string") {
            return members;
        }
        text.split(",").forEach(function (part) {
            var spec = scorerSpec(part.split("=")[0]);
            if (spec && spec.label !== ENSEMBLE && members.indexOf(spec.label) < 0) {
                members.push(spec.label);
            }
        });
        return members;
    }

    /**
     * What an infotext's settings line says of its score: {score, scorer (label), digits, members}, or null.
     * The scorer is the "ImageReward scorer" entry's (absent: ImageReward); the score is the value under that scorer's
     * key. An unknown scorer gives null: better no badge than another key's number. members: for an ensemble, each
     * member's score written beside it, [{scorer, score, digits}], in the order of its weights, then the table's;
     * empty otherwise. As in the WebUI's own parser (and our Python reader), the last line counts as the settings
     * line only when it holds at least 3 "Key: value" pairs; a key given twice takes its last value.
     */
    function readInfotext(infotext) {
        var pairs = settingsPairs(infotext);
        if (!pairs) {
            return null;
        }
        var label = settingValue(pairs, SCORER_KEY);
        var spec = label === null ? scorerInfo(DEFAULT_SCORER) : scorerSpec(label);
        if (!spec) {
            return null;
        }
        var score = toFiniteNumber(settingValue(pairs, spec.key));
        if (score === null) {
            return null;
        }
        var members = [];
        if (spec.label === ENSEMBLE) {
            var order = weightedMembers(settingValue(pairs, WEIGHTS_KEY));
            for (var other in SCORERS) {
                var listed = order.indexOf(other) >= 0;
                if (Object.prototype.hasOwnProperty.call(SCORERS, other) && other !== ENSEMBLE && !listed) {
                    order.push(other);
                }
            }
            order.forEach(function (member) {
                var value = toFiniteNumber(settingValue(pairs, SCORERS[member].key));
                if (value !== null) {
                    members.push({scorer: member, score: value, digits: SCORERS[member].digits});
                }
            });
        }
        return {score: score, scorer: spec.label, digits: spec.digits, members: members};
    }

    /** The "ImageReward status" an infotext's settings line carries ("unfinished · not saved"), or null. */
    function readStatus(infotext) {
        var pairs = settingsPairs(infotext);
        var value = pairs ? settingValue(pairs, STATUS_KEY) : null;
        return value && value.trim() ? value.trim() : null;
    }

    /** A badge entry for an image shown with a status instead of a score: a label, no score, no rank. */
    function statusEntry(status) {
        return {score: null, rank: null, groupSize: null, group: null, best: false, source: "infotext", scorer: null,
            digits: null, members: [], status: status};
    }

    /** The score written on an infotext's settings line under its scorer's key (see readInfotext), or null. */
    function parseInfotextScore(infotext) {
        var read = readInfotext(infotext);
        return read ? read.score : null;
    }

    /**
     * How far apart the infotext's and the details' numbers for the same score can be: half a unit of the last digit
     * written in the infotext plus half a unit of the details' (4 decimals), and a hair for binary fractions.
     */
    function agreementTolerance(digits) {
        var places = typeof digits === "number" && digits >= 0 ? digits : SCORE_DIGITS;
        return 0.5 * Math.pow(10, -places) + 0.5 * Math.pow(10, -DETAILS_DIGITS) + 1e-9;
    }

    /** Whether a details score and an infotext score (written with `digits` decimals) are the same number. */
    function scoresAgree(detailsScore, infotextScore, digits) {
        var slack = 1e-12 * Math.max(1, Math.abs(detailsScore), Math.abs(infotextScore));
        return Math.abs(detailsScore - infotextScore) <= agreementTolerance(digits) + slack;
    }

    var AGREEMENT = agreementTolerance(SCORE_DIGITS); // ImageReward's (3 decimals against 4)

    // ------------------------------------------------------------------------------------------------------------
    // Generation info parsing
    // ------------------------------------------------------------------------------------------------------------

    /**
     * The scorer a details summary declares: its summary.scorer (a name, "pickscore") or else its score_key
     * ("PickScore"). Returns {declared, spec, text}: declared false for details written before there was a choice (then
     * spec is ImageReward's); spec null for a scorer this table does not know; text: what it said.
     */
    function detailsScorer(rawSummary) {
        var name = isObject(rawSummary) && typeof rawSummary.scorer === "string" && rawSummary.scorer.trim()
            ? rawSummary.scorer.trim() : null;
        var key = isObject(rawSummary) && typeof rawSummary.score_key === "string" && rawSummary.score_key.trim()
            ? rawSummary.score_key.trim() : null;
        if (name === null && key === null) {
            return {declared: false, spec: scorerInfo(DEFAULT_SCORER), text: null};
        }
        var spec = name !== null ? scorerSpec(name) : null;
        if (!spec && name === null) {
            for (var label in SCORERS) {
                if (Object.prototype.hasOwnProperty.call(SCORERS, label) && SCORERS[label].key === key) {
                    spec = scorerInfo(label);
                }
            }
        }
        return {declared: true, spec: spec, text: name !== null ? name : key};
    }

    function sanitizeSummary(raw) {
        if (!isObject(raw)) {
            return null;
        }
        var threshold = toFiniteNumber(raw.threshold);
        var scorer = detailsScorer(raw);
        return {
            scored: toInteger(raw.scored, 0),
            kept: toInteger(raw.kept, 0),
            discarded: toInteger(raw.discarded, 0),
            min: toFiniteNumber(raw.min),
            max: toFiniteNumber(raw.max),
            mode: typeof raw.mode === "string" && raw.mode ? raw.mode : null,
            threshold: threshold,
            fallback: raw.fallback === true,
            // the scorer's label (a name this table does not know stays as written); digits: null when unknown
            scorer: scorer.spec ? scorer.spec.label : scorer.text,
            digits: scorer.spec ? scorer.spec.digits : null,
        };
    }

    /** A details entry as a badge entry, with the scorer `spec` (details alone carry no member scores). */
    function entryFromDetails(item, spec) {
        var score = toFiniteNumber(item.score);
        if (score === null) {
            return null;
        }
        var rank = toInteger(item.rank, 1);
        var groupSize = toInteger(item.group_size, 1);
        if (rank !== null && groupSize !== null && rank > groupSize) {
            groupSize = null; // inconsistent data: keep the rank, drop the size
        }
        var best = typeof item.best === "boolean" ? item.best : rank === 1;
        var scorer = spec || scorerInfo(DEFAULT_SCORER);
        return {
            score: score,
            rank: rank,
            groupSize: groupSize,
            group: toInteger(item.group, 0),
            best: best,
            source: "details",
            scorer: scorer.label,
            digits: scorer.digits,
            members: [],
        };
    }

    /**
     * Parses the generation info (a Processed.js() JSON string, or the already parsed object).
     *
     * Returns null when it holds no score (or is not valid JSON). Otherwise
     *   { firstIndex, images: {<gallery index>: entry}, count,
     *     summary: {scored, kept, discarded, min, max, mode, threshold, fallback, scorer, digits} | null, hasDetails }
     * where entry = {score, rank, groupSize, group, best, source ("details" | "infotext"), scorer (label), digits,
     * members ([{scorer, score, digits}], an ensemble's)}.
     * Gallery indices below index_of_first_image (the grid image) never get an entry.
     */
    function parseGenerationInfo(input) {
        var info = input;
        if (typeof input === "string") {
            if (!input) {
                return null;
            }
            try {
                info = JSON.parse(input);
            } catch (e) {
                return null;
            }
        }
        if (!isObject(info)) {
            return null;
        }

        var firstIndex = toInteger(info.index_of_first_image, 0);
        if (firstIndex === null) {
            firstIndex = 0;
        }
        var images = {};
        var count = 0;

        var extra = isObject(info.extra_generation_params) ? info.extra_generation_params : null;
        var details = extra ? extra[DETAILS_KEY] : null;
        if (typeof details === "string") {
            try {
                details = JSON.parse(details);
            } catch (e) {
                details = null;
            }
        }
        if (!isObject(details)) {
            details = null;
        }
        // The details' scorer: declared in its summary since there is a choice; before, always ImageReward.
        var fromScorer = detailsScorer(details ? details.summary : null);

        // The score is always the one written in the image's infotext (what its file says). The details object only
        // adds rank and group, and only where its score agrees with that infotext (and its scorer, where declared, is
        // the infotext's): after the gallery's Upscale or in an X/Y/Z grid, the details can belong to another job
        // than the image shown.
        var fromDetails = {};
        if (details && Array.isArray(details.images)) {
            details.images.forEach(function (item) {
                if (!isObject(item)) {
                    return;
                }
                var position = toInteger(item.position, 0);
                var index = position !== null ? firstIndex + position : toInteger(item.index, 0);
                if (index === null || index < firstIndex || Object.prototype.hasOwnProperty.call(fromDetails, index)) {
                    return;
                }
                var entry = entryFromDetails(item, fromScorer.spec);
                if (entry) {
                    fromDetails[index] = entry;
                }
            });
        }
        var infotexts = Array.isArray(info.infotexts) ? info.infotexts : null;
        if (infotexts) {
            for (var k = firstIndex; k < infotexts.length; k++) {
                var status = readStatus(infotexts[k]);
                if (status !== null) {
                    images[k] = statusEntry(status);
                    count++;
                    continue;
                }
                var read = readInfotext(infotexts[k]);
                if (read === null) {
                    continue;
                }
                var known = fromDetails[k];
                var sameScorer = !fromScorer.declared || (fromScorer.spec && fromScorer.spec.label === read.scorer);
                var entry;
                if (known && sameScorer && scoresAgree(known.score, read.score, read.digits)) {
                    entry = known;
                    entry.source = "details";
                } else {
                    entry = {score: 0, rank: null, groupSize: null, group: null, best: false, source: "infotext"};
                }
                entry.score = read.score;
                entry.scorer = read.scorer;
                entry.digits = read.digits;
                entry.members = read.members;
                images[k] = entry;
                count++;
            }
        } else if (fromScorer.spec) {
            Object.keys(fromDetails).forEach(function (key) {
                images[key] = fromDetails[key];
                count++;
            });
        }

        var summary = details ? sanitizeSummary(details.summary) : null;
        if (details && !summary && count > 0) {
            summary = summaryFromImages(images);
        }
        if (count === 0 && !summary) {
            return null;
        }
        return {firstIndex: firstIndex, images: images, count: count, summary: summary, hasDetails: !!details};
    }

    /** A minimal summary when the details object lacks one: what is visible is what was kept. */
    function summaryFromImages(images) {
        var min = null;
        var max = null;
        var n = 0;
        var scorer = null;
        var digits = null;
        Object.keys(images).forEach(function (key) {
            var score = images[key].score;
            if (typeof score !== "number") {
                return; // an image shown with a status, not a score
            }
            min = min === null ? score : Math.min(min, score);
            max = max === null ? score : Math.max(max, score);
            if (n === 0 && typeof images[key].scorer === "string") {
                scorer = images[key].scorer;
                digits = typeof images[key].digits === "number" ? images[key].digits : null;
            }
            n++;
        });
        return {scored: null, kept: n, discarded: null, min: min, max: max, mode: null, threshold: null, fallback: false,
            scorer: scorer, digits: digits};
    }

    // ------------------------------------------------------------------------------------------------------------
    // Where a thumbnail's picture is drawn (CSS object-fit / object-position)
    // ------------------------------------------------------------------------------------------------------------

    // object-position keywords: the axis they name (null: either) and the percentage they stand for.
    var POSITION_KEYWORDS = {left: ["x", 0], center: [null, 50], right: ["x", 100], top: ["y", 0], bottom: ["y", 100]};
    var LENGTH_RE = /^([+-]?(?:\d+(?:\.\d*)?|\.\d+))(%|px)?$/;

    /** One value of object-position: {axis ("x", "y" or null), percent, px} (one of the two set); null if unknown. */
    function positionValue(text) {
        if (Object.prototype.hasOwnProperty.call(POSITION_KEYWORDS, text)) {
            return {axis: POSITION_KEYWORDS[text][0], percent: POSITION_KEYWORDS[text][1], px: null};
        }
        var match = LENGTH_RE.exec(text);
        if (!match || (!match[2] && Number(match[1]) !== 0)) {
            return null; // a bare number other than 0 is no length
        }
        var number = Number(match[1]);
        return match[2] === "%" ? {axis: null, percent: number, px: null} : {axis: null, percent: null, px: number};
    }

    /**
     * An object-position value ("50% 0%", "10px 20px", "right top", "bottom") as {x, y} of positionValue(); null for
     * what this does not read (calc(), the four-value form, "left right").
     */
    function parseObjectPosition(value) {
        var parts = typeof value === "string" ? value.trim().toLowerCase().split(/\s+/) : [];
        if (parts.length === 1 && parts[0]) {
            parts.push("center");
        }
        if (parts.length !== 2) {
            return null;
        }
        var x = positionValue(parts[0]);
        var y = positionValue(parts[1]);
        if (!x || !y) {
            return null;
        }
        if (x.axis === "y" || y.axis === "x") { // "top left", "bottom 10px": the vertical one came first
            var first = x;
            x = y;
            y = first;
        }
        return x.axis === "y" || y.axis === "x" ? null : {x: x, y: y};
    }

    /** How much object-fit scales the picture (null: fill, which stretches it to the box; undefined: unknown). */
    function fitScale(fit, scaleX, scaleY) {
        switch (fit) {
            case "fill":
                return null;
            case "contain":
                return Math.min(scaleX, scaleY);
            case "cover":
                return Math.max(scaleX, scaleY);
            case "none":
                return 1;
            case "scale-down":
                return Math.min(1, scaleX, scaleY);
            default:
                return undefined;
        }
    }

    /**
     * The part of an <img> element's box its picture is drawn on, {left, top, width, height} in px from the box's
     * corner, from the box's size, the picture's natural size and the computed object-fit and object-position (what
     * the browser does, clipped to the box). A1111's and reForge's thumbnails cover their cell (gradio's default), so
     * this is the whole box; SD.Next's modern UI scales them down at "50% 0%", which draws a portrait or small picture
     * centred at the top with empty bands beside it (Forge Neo's contain, centred, does so for any non-square one).
     * The whole box for anything unknown, and while the picture is not loaded (natural size 0).
     */
    function pictureRect(width, height, naturalWidth, naturalHeight, fit, position) {
        var boxWidth = toFiniteNumber(width) || 0;
        var boxHeight = toFiniteNumber(height) || 0;
        var box = {left: 0, top: 0, width: Math.max(0, boxWidth), height: Math.max(0, boxHeight)};
        var natural = [toFiniteNumber(naturalWidth), toFiniteNumber(naturalHeight)];
        var at = parseObjectPosition(position);
        if (!(natural[0] > 0 && natural[1] > 0) || !at || box.width === 0 || box.height === 0) {
            return box;
        }
        var scale = fitScale(typeof fit === "string" ? fit.trim().toLowerCase() : fit,
            box.width / natural[0], box.height / natural[1]);
        if (!scale) {
            return box; // fill, or an object-fit this does not know
        }
        var drawnWidth = natural[0] * scale;
        var drawnHeight = natural[1] * scale;
        var left = at.x.px !== null ? at.x.px : (box.width - drawnWidth) * at.x.percent / 100;
        var top = at.y.px !== null ? at.y.px : (box.height - drawnHeight) * at.y.percent / 100;
        var right = Math.min(box.width, left + drawnWidth);
        var bottom = Math.min(box.height, top + drawnHeight);
        left = Math.min(box.width, Math.max(0, left));
        top = Math.min(box.height, Math.max(0, top));
        return {left: left, top: top, width: Math.max(0, right - left), height: Math.max(0, bottom - top)};
    }

    // ------------------------------------------------------------------------------------------------------------
    // Presentation: numbers, colours, texts
    // ------------------------------------------------------------------------------------------------------------

    /** "0.81", "\u22120.42" (typographic minus); a value that rounds to zero has no sign; "" for non-numbers. */
    function formatScore(score, digits) {
        if (typeof score !== "number" || !isFinite(score)) {
            return "";
        }
        var places = typeof digits === "number" ? digits : 2;
        var text = Math.abs(score).toFixed(places);
        var negative = score < 0 && Number(text) !== 0;
        return (negative ? MINUS : "") + text;
    }

    /** The colour range [red at, green at] of a scorer given by label, or given as such a pair; ImageReward's else. */
    function colourRange(scorer) {
        if (Array.isArray(scorer) && scorer.length === 2) {
            var red = toFiniteNumber(scorer[0]);
            var green = toFiniteNumber(scorer[1]);
            if (red !== null && green !== null && red < green) {
                return [red, green];
            }
        }
        var spec = scorerSpec(scorer);
        return spec ? spec.colours : [SCALE_MIN, SCALE_MAX];
    }

    /**
     * Hue on the scorer's fixed range [red at, green at] (ImageReward's when none is given: -2, 2): red (0) at or below
     * the first value, amber (40) halfway, green (120) at or above the second.
     */
    function scoreHue(score, scorer) {
        if (typeof score !== "number" || !isFinite(score)) {
            return null;
        }
        var range = colourRange(scorer);
        var low = range[0];
        var high = range[1];
        var middle = (low + high) / 2;
        var t = Math.min(high, Math.max(low, score));
        var hue = t <= middle ? 40 * (t - low) / (middle - low) : 40 + 80 * (t - middle) / (high - middle);
        return Math.round(hue * 10) / 10;
    }

    /** CSS colour for a score on its scorer's fixed range (tuned for the badge's dark background); grey for none. */
    function scoreColor(score, scorer) {
        var hue = scoreHue(score, scorer);
        if (hue === null) {
            return "hsl(0, 0%, 62%)";
        }
        return "hsl(" + hue + ", 90%, 55%)";
    }

    /** Best marker is shown only when the image won a comparison (unknown group size counts as a comparison). */
    function showsBest(entry) {
        return !!entry && entry.best === true && entry.groupSize !== 1;
    }

    /** The decimals an entry's score is shown with: its scorer's (ImageReward's 3 when it names none). */
    function entryDigits(entry) {
        return entry && typeof entry.digits === "number" && entry.digits >= 0 ? entry.digits : SCORE_DIGITS;
    }

    /**
     * The score as the tooltip names it: "ImageReward score 0.812" (as always), "PickScore 21.312", and for an
     * ensemble its members: "Ensemble 0.812 (ImageReward 0.410, HPSv2.1 0.2714)".
     */
    function scoreDescription(entry) {
        var label = entry.scorer && typeof entry.scorer === "string" ? entry.scorer : DEFAULT_SCORER;
        var text = label === DEFAULT_SCORER ? DEFAULT_SCORER + " score " : label + " ";
        text += formatScore(entry.score, entryDigits(entry));
        if (Array.isArray(entry.members) && entry.members.length) {
            text += " (" + entry.members.map(function (member) {
                return member.scorer + " " + formatScore(member.score, entryDigits(member));
            }).join(", ") + ")";
        }
        return text;
    }

    /**
     * Tooltip / accessible description: "ImageReward score 0.812 \u2014 rank 1 of 4 in its group \u2014 best",
     * "PickScore 21.312 \u2014 ...".
     */
    function badgeTooltip(entry) {
        if (!entry) {
            return "";
        }
        if (entry.status) {
            return DEFAULT_SCORER + ": " + entry.status + " " + DASH + " its batch was interrupted, so it was not " +
                "ranked with the finished candidates";
        }
        var text = scoreDescription(entry);
        if (entry.groupSize === 1) {
            return text + " " + DASH + " the only candidate in its group";
        }
        if (entry.rank !== null && entry.rank !== undefined) {
            text += " " + DASH + " rank " + entry.rank;
            if (entry.groupSize) {
                text += " of " + entry.groupSize;
            }
            text += " in its group";
            if (showsBest(entry)) {
                text += " " + DASH + " best";
            }
        } else if (showsBest(entry)) {
            text += " " + DASH + " best in its group";
        }
        return text;
    }

    function plural(n, one, many) {
        return n + " " + (n === 1 ? one : many);
    }

    /**
     * "ImageReward: 16 candidates scored, 4 kept, 12 discarded · scores −1.23 … 0.81" (+ fallback note); another
     * scorer is named after the extension: "ImageReward · PickScore: ...". The range has one decimal fewer than the
     * scorer writes (ImageReward: 2). Parts whose numbers are missing are left out. "" for no summary.
     */
    function summaryText(summary) {
        if (!isObject(summary)) {
            return "";
        }
        var spec = scorerSpec(summary.scorer);
        var named = spec ? spec.label : typeof summary.scorer === "string" ? summary.scorer.trim() : "";
        var digits = (spec ? spec.digits : SCORE_DIGITS) - 1;
        var counts = [];
        var kept = toInteger(summary.kept, 0);
        var scored = toInteger(summary.scored, 0);
        var discarded = toInteger(summary.discarded, 0);
        if (discarded === null && scored !== null && kept !== null && scored >= kept) {
            discarded = scored - kept;
        }
        if (scored !== null) {
            counts.push(plural(scored, "candidate", "candidates") + " scored");
        }
        if (kept !== null) {
            counts.push(scored === null ? plural(kept, "image", "images") + " scored" : kept + " kept");
        }
        if (discarded !== null && scored !== null) {
            counts.push(discarded + " discarded");
        }
        var parts = [];
        if (counts.length) {
            parts.push(counts.join(", "));
        }
        var min = toFiniteNumber(summary.min);
        var max = toFiniteNumber(summary.max);
        if (min !== null && max !== null) {
            parts.push(min === max ? "score " + formatScore(min, digits)
                : "scores " + formatScore(min, digits) + " " + ELLIPSIS + " " + formatScore(max, digits));
        }
        if (summary.fallback === true) {
            var threshold = toFiniteNumber(summary.threshold);
            parts.push("no candidate reached the threshold" + (threshold !== null ? " (" + formatScore(threshold, digits) + ")" : "") +
                ", so the best was kept anyway");
        }
        if (!parts.length) {
            return "";
        }
        var head = named && named !== DEFAULT_SCORER ? DEFAULT_SCORER + " \u00b7 " + named : DEFAULT_SCORER;
        return head + ": " + parts.join(" \u00b7 ");
    }

    var logic = {
        DETAILS_KEY: DETAILS_KEY,
        INFOTEXT_KEY: INFOTEXT_KEY,
        SCORER_KEY: SCORER_KEY,
        WEIGHTS_KEY: WEIGHTS_KEY,
        STATUS_KEY: STATUS_KEY,
        DEFAULT_SCORER: DEFAULT_SCORER,
        ENSEMBLE: ENSEMBLE,
        SCORERS: SCORERS,
        OPTION_KEY: OPTION_KEY,
        MIN_SETTINGS: MIN_SETTINGS,
        TABS: TABS,
        SCALE_MIN: SCALE_MIN,
        SCALE_MAX: SCALE_MAX,
        MINUS: MINUS,
        STAR: STAR,
        ELLIPSIS: ELLIPSIS,
        DASH: DASH,
        SCORE_DIGITS: SCORE_DIGITS,
        DETAILS_DIGITS: DETAILS_DIGITS,
        AGREEMENT: AGREEMENT,
        CLS_BADGE: CLS_BADGE,
        CLS_SUMMARY: CLS_SUMMARY,
        ID_PREFIX: ID_PREFIX,
        NUMBER_RE: NUMBER_RE,
        isObject: isObject,
        toFiniteNumber: toFiniteNumber,
        toInteger: toInteger,
        settingsLine: settingsLine,
        splitSettingsLine: splitSettingsLine,
        settingsPairs: settingsPairs,
        settingValue: settingValue,
        scorerSpec: scorerSpec,
        weightedMembers: weightedMembers,
        readInfotext: readInfotext,
        parseInfotextScore: parseInfotextScore,
        readStatus: readStatus,
        statusEntry: statusEntry,
        agreementTolerance: agreementTolerance,
        scoresAgree: scoresAgree,
        detailsScorer: detailsScorer,
        sanitizeSummary: sanitizeSummary,
        entryFromDetails: entryFromDetails,
        parseGenerationInfo: parseGenerationInfo,
        summaryFromImages: summaryFromImages,
        formatScore: formatScore,
        colourRange: colourRange,
        scoreHue: scoreHue,
        scoreColor: scoreColor,
        showsBest: showsBest,
        entryDigits: entryDigits,
        scoreDescription: scoreDescription,
        badgeTooltip: badgeTooltip,
        plural: plural,
        summaryText: summaryText,
        parseObjectPosition: parseObjectPosition,
        pictureRect: pictureRect,
    };

    if (typeof window !== "undefined" && window) {
        window.imageRewardLogic = logic;
    }
    if (typeof module !== "undefined" && module.exports) {
        module.exports = logic;
    }
})();
