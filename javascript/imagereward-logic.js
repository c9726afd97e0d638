/*
 * sd-webui-imagereward: the pure part of the gallery overlays (no DOM): reading the generation info and infotexts,
 * numbers, colours and texts. The WebUI loads every file of javascript/ in name order, so this one comes before
 * imagereward.js, which draws the badges with it. Global: window.imageRewardLogic; under Node, module.exports.
 *
 * The badge's score is always the "ImageReward: <num>" pair on the last line of the image's infotext (the one
 * parser of infotexts here); extra_generation_params["ImageReward details"] adds rank and group where it agrees.
 */
(function () {
    "use strict";


    var DETAILS_KEY = "ImageReward details";
    var INFOTEXT_KEY = "ImageReward";
    var OPTION_KEY = "imagereward_show_overlays";
    var MIN_SETTINGS = 3; // pairs a last line needs to be a settings line (the WebUI's rule)
    var TABS = ["txt2img", "img2img", "imagereward_collection"]; // the last: our folder tab's gallery
    var SCALE_MIN = -2;
    var SCALE_MAX = 2;
    var MINUS = "\u2212";
    var STAR = "\u2605";
    var ELLIPSIS = "\u2026";
    var DASH = "\u2014";
    var SCORE_DIGITS = 3; // the infotext's precision
    var AGREEMENT = 0.0006; // infotext (3 decimals) against details (4 decimals) of the same score

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

    /**
     * The ImageReward score written on an infotext's settings line, or null. As in the WebUI's own parser (and our
     * Python reader), the last line counts as the settings line only when it holds at least 3 "Key: value" pairs;
     * a key given twice takes its last value.
     */
    function parseInfotextScore(infotext) {
        var pairs = splitSettingsLine(settingsLine(infotext));
        if (pairs.length < MIN_SETTINGS) {
            return null;
        }
        var raw = null;
        for (var i = 0; i < pairs.length; i++) {
            if (pairs[i][0] === INFOTEXT_KEY) {
                raw = pairs[i][1];
            }
        }
        if (raw === null) {
            return null;
        }
        if (raw.length >= 2 && raw.charAt(0) === "\"" && raw.charAt(raw.length - 1) === "\"") {
            raw = raw.slice(1, -1);
        }
        return toFiniteNumber(raw);
    }

    // ------------------------------------------------------------------------------------------------------------
    // Generation info parsing
    // ------------------------------------------------------------------------------------------------------------

    function sanitizeSummary(raw) {
        if (!isObject(raw)) {
            return null;
        }
        var threshold = toFiniteNumber(raw.threshold);
        return {
            scored: toInteger(raw.scored, 0),
            kept: toInteger(raw.kept, 0),
            discarded: toInteger(raw.discarded, 0),
            min: toFiniteNumber(raw.min),
            max: toFiniteNumber(raw.max),
            mode: typeof raw.mode === "string" && raw.mode ? raw.mode : null,
            threshold: threshold,
            fallback: raw.fallback === true,
        };
    }

    function entryFromDetails(item) {
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
        return {
            score: score,
            rank: rank,
            groupSize: groupSize,
            group: toInteger(item.group, 0),
            best: best,
            source: "details",
        };
    }

    /**
     * Parses the generation info (a Processed.js() JSON string, or the already parsed object).
     *
     * Returns null when it holds no ImageReward data (or is not valid JSON). Otherwise
     *   { firstIndex, images: {<gallery index>: {score, rank, groupSize, group, best, source}}, count,
     *     summary: {scored, kept, discarded, min, max, mode, threshold, fallback} | null, hasDetails }
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

        // The score is always the one written in the image's infotext (what its file says). The details object only
        // adds rank and group, and only where its score agrees with that infotext: after the gallery's Upscale or in
        // an X/Y/Z grid, the details can belong to another job than the image shown.
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
                var entry = entryFromDetails(item);
                if (entry) {
                    fromDetails[index] = entry;
                }
            });
        }
        var infotexts = Array.isArray(info.infotexts) ? info.infotexts : null;
        if (infotexts) {
            for (var k = firstIndex; k < infotexts.length; k++) {
                var score = parseInfotextScore(infotexts[k]);
                if (score === null) {
                    continue;
                }
                var known = fromDetails[k];
                if (known && Math.abs(known.score - score) <= AGREEMENT) {
                    known.score = score;
                    images[k] = known;
                } else {
                    images[k] = {score: score, rank: null, groupSize: null, group: null, best: false, source: "infotext"};
                }
                count++;
            }
        } else {
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
        Object.keys(images).forEach(function (key) {
            var score = images[key].score;
            min = min === null ? score : Math.min(min, score);
            max = max === null ? score : Math.max(max, score);
            n++;
        });
        return {scored: null, kept: n, discarded: null, min: min, max: max, mode: null, threshold: null, fallback: false};
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

    /** Hue on the fixed scale: -2 (or lower) -> 0 (red), 0 -> 40 (amber), +2 (or higher) -> 120 (green). */
    function scoreHue(score) {
        if (typeof score !== "number" || !isFinite(score)) {
            return null;
        }
        var t = Math.min(SCALE_MAX, Math.max(SCALE_MIN, score));
        var hue = t <= 0 ? 40 * (t - SCALE_MIN) / -SCALE_MIN : 40 + 80 * t / SCALE_MAX;
        return Math.round(hue * 10) / 10;
    }

    /** CSS colour for a score on the fixed scale (tuned to sit on the badge's dark background); grey for none. */
    function scoreColor(score) {
        var hue = scoreHue(score);
        if (hue === null) {
            return "hsl(0, 0%, 62%)";
        }
        return "hsl(" + hue + ", 90%, 55%)";
    }

    /** Best marker is shown only when the image won a comparison (unknown group size counts as a comparison). */
    function showsBest(entry) {
        return !!entry && entry.best === true && entry.groupSize !== 1;
    }

    /** Tooltip / accessible description: "ImageReward score 0.812 — rank 1 of 4 in its group — best". */
    function badgeTooltip(entry) {
        if (!entry) {
            return "";
        }
        var text = "ImageReward score " + formatScore(entry.score, 3);
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
     * "ImageReward: 16 candidates scored, 4 kept, 12 discarded · scores −1.23 … 0.81" (+ fallback note).
     * Parts whose numbers are missing are left out. "" for no summary.
     */
    function summaryText(summary) {
        if (!isObject(summary)) {
            return "";
        }
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
            parts.push(min === max ? "score " + formatScore(min) : "scores " + formatScore(min) + " " + ELLIPSIS + " " + formatScore(max));
        }
        if (summary.fallback === true) {
            var threshold = toFiniteNumber(summary.threshold);
            parts.push("no candidate reached the threshold" + (threshold !== null ? " (" + formatScore(threshold) + ")" : "") +
                ", so the best was kept anyway");
        }
        if (!parts.length) {
            return "";
        }
        return "ImageReward: " + parts.join(" \u00b7 ");
    }

    var logic = {
        DETAILS_KEY: DETAILS_KEY,
        INFOTEXT_KEY: INFOTEXT_KEY,
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
        parseInfotextScore: parseInfotextScore,
        sanitizeSummary: sanitizeSummary,
        entryFromDetails: entryFromDetails,
        parseGenerationInfo: parseGenerationInfo,
        summaryFromImages: summaryFromImages,
        formatScore: formatScore,
        scoreHue: scoreHue,
        scoreColor: scoreColor,
        showsBest: showsBest,
        badgeTooltip: badgeTooltip,
        plural: plural,
        summaryText: summaryText,
    };

    if (typeof window !== "undefined" && window) {
        window.imageRewardLogic = logic;
    }
    if (typeof module !== "undefined" && module.exports) {
        module.exports = logic;
    }
})();
