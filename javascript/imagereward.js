/*
 * sd-webui-imagereward: score badges on the txt2img / img2img output galleries.
 *
 * Data source: the hidden generation-info textbox (#generation_info_<tab> textarea), which holds the WebUI's
 * Processed.js() JSON. Each badge shows the "ImageReward: <num>" pair of its image's infotext (what the saved file
 * says); extra_generation_params["ImageReward details"] adds rank and group where its score agrees.
 * Nothing is ever read back from the page's rendered HTML.
 *
 * Layout of this file: pure helpers (parsing, formatting, colour, texts), DOM helpers that work on a given
 * gallery element (no globals needed, so they run under jsdom), then the update loop and its registration with
 * the WebUI's callbacks, which only happens when those callbacks exist. The only global is
 * window.imageRewardOverlay; under Node the same object is module.exports.
 */
(function () {
    "use strict";

    var DETAILS_KEY = "ImageReward details";
    var INFOTEXT_KEY = "ImageReward";
    var OPTION_KEY = "imagereward_show_overlays";
    var MIN_SETTINGS = 3; // pairs a last line needs to be a settings line (the WebUI's rule)
    var TABS = ["txt2img", "img2img"];
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
                var index = toInteger(item.index, 0);
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

    // ------------------------------------------------------------------------------------------------------------
    // DOM: badges on one gallery element
    // ------------------------------------------------------------------------------------------------------------

    /** Thumbnails grouped by their list (grid view, preview strip), each in gallery order. */
    function thumbnailGroups(gallery) {
        var groups = [];
        var items = gallery.querySelectorAll(".thumbnail-item");
        for (var i = 0; i < items.length; i++) {
            var item = items[i];
            var container = item.closest ? item.closest(".thumbnails, .grid-wrap") : null;
            if (!container || !gallery.contains(container)) {
                container = item.parentNode;
            }
            var group = null;
            for (var g = 0; g < groups.length; g++) {
                if (groups[g].container === container) {
                    group = groups[g];
                    break;
                }
            }
            if (!group) {
                var strip = container.classList && container.classList.contains("thumbnails");
                var grid = container.classList && container.classList.contains("grid-wrap");
                var kind = strip ? "strip" : grid ? "grid" : item.classList.contains("thumbnail-small") ? "strip" : "grid";
                group = {container: container, kind: kind, items: []};
                groups.push(group);
            }
            group.items.push(item);
        }
        return groups;
    }

    /** Gallery index of the selected image (the strip wins over the grid), or -1. */
    function selectedIndex(groups) {
        var ordered = groups.filter(function (g) {
            return g.kind === "strip";
        }).concat(groups.filter(function (g) {
            return g.kind !== "strip";
        }));
        for (var g = 0; g < ordered.length; g++) {
            for (var i = 0; i < ordered[g].items.length; i++) {
                if (ordered[g].items[i].classList.contains("selected")) {
                    return i;
                }
            }
        }
        return -1;
    }

    function ownBadge(host) {
        var children = host.children;
        for (var i = 0; i < children.length; i++) {
            if (children[i].classList.contains(CLS_BADGE)) {
                return children[i];
            }
        }
        return null;
    }

    function describedByTokens(host) {
        var value = host.getAttribute("aria-describedby");
        return value ? value.split(/\s+/).filter(Boolean) : [];
    }

    function linkDescription(host, id) {
        var tokens = describedByTokens(host);
        if (tokens.indexOf(id) >= 0) {
            return;
        }
        tokens = tokens.filter(function (t) {
            return t.indexOf(ID_PREFIX) !== 0;
        });
        tokens.push(id);
        host.setAttribute("aria-describedby", tokens.join(" "));
    }

    function unlinkDescription(host) {
        var tokens = describedByTokens(host);
        if (!tokens.length) {
            return;
        }
        var kept = tokens.filter(function (t) {
            return t.indexOf(ID_PREFIX) !== 0;
        });
        if (kept.length === tokens.length) {
            return;
        }
        if (kept.length) {
            host.setAttribute("aria-describedby", kept.join(" "));
        } else {
            host.removeAttribute("aria-describedby");
        }
    }

    function removeBadge(host) {
        var badge = ownBadge(host);
        if (!badge) {
            return false;
        }
        host.removeChild(badge);
        unlinkDescription(host);
        return true;
    }

    function badgeText(entry, variant) {
        var text = formatScore(entry.score, SCORE_DIGITS);
        if (variant === "preview" && entry.rank !== null && entry.groupSize !== null && entry.groupSize > 1) {
            text += " \u00b7 rank " + entry.rank + "/" + entry.groupSize;
        }
        return text;
    }

    function badgeSignature(entry, variant, id) {
        return [variant, id, formatScore(entry.score, SCORE_DIGITS), showsBest(entry) ? 1 : 0, badgeText(entry, variant), badgeTooltip(entry),
            scoreColor(entry.score)].join("|");
    }

    function fillBadge(doc, badge, entry, variant, id, signature) {
        var best = showsBest(entry);
        badge.className = CLS_BADGE + " " + CLS_BADGE + "--" + variant + (best ? " " + CLS_BADGE + "--best" : "");
        badge.id = id;
        badge.title = badgeTooltip(entry);
        badge.setAttribute("data-imagereward-sig", signature);
        badge.style.setProperty("--imagereward-color", scoreColor(entry.score));
        while (badge.firstChild) {
            badge.removeChild(badge.firstChild);
        }
        var dot = doc.createElement("span");
        dot.className = "imagereward-badge__dot";
        dot.setAttribute("aria-hidden", "true");
        badge.appendChild(dot);
        if (best) {
            var star = doc.createElement("span");
            star.className = "imagereward-badge__star";
            star.setAttribute("aria-hidden", "true");
            star.textContent = STAR;
            badge.appendChild(star);
        }
        var value = doc.createElement("span");
        value.className = "imagereward-badge__score";
        value.setAttribute("aria-hidden", "true");
        value.textContent = badgeText(entry, variant);
        badge.appendChild(value);
        var sr = doc.createElement("span");
        sr.className = "imagereward-sr";
        sr.textContent = badgeTooltip(entry);
        badge.appendChild(sr);
    }

    /** Adds or refreshes the badge inside host; no DOM write when it is already up to date. Returns true on change. */
    function ensureBadge(host, entry, variant, id, describe) {
        var doc = host.ownerDocument;
        var signature = badgeSignature(entry, variant, id);
        var badge = ownBadge(host);
        var changed = false;
        if (!badge) {
            badge = doc.createElement("span");
            fillBadge(doc, badge, entry, variant, id, signature); // filled before insertion: one mutation
            host.appendChild(badge);
            changed = true;
        } else if (badge.getAttribute("data-imagereward-sig") !== signature) {
            fillBadge(doc, badge, entry, variant, id, signature);
            changed = true;
        }
        if (describe) {
            var before = host.getAttribute("aria-describedby");
            linkDescription(host, id);
            changed = changed || before !== host.getAttribute("aria-describedby");
        }
        return changed;
    }

    function galleryKeyName(gallery) {
        var id = gallery.id || "gallery";
        return id.replace(/[^A-Za-z0-9_-]/g, "_");
    }

    /**
     * Puts a badge on every thumbnail (grid and strip) and on the large preview of one gallery element, from a
     * parseGenerationInfo() result; removes badges where there is no score. parsed === null (or options.enabled
     * === false) removes every badge. Idempotent: a second call with the same data writes nothing.
     * Returns {badges, changed}: badges now present, DOM nodes added/updated/removed.
     */
    function applyBadges(gallery, parsed, options) {
        var result = {badges: 0, changed: 0};
        if (!gallery || typeof gallery.querySelectorAll !== "function") {
            return result;
        }
        var enabled = !(options && options.enabled === false);
        var images = enabled && parsed && parsed.images ? parsed.images : null;
        var existing = gallery.getElementsByClassName(CLS_BADGE).length;
        if (!images && existing === 0) {
            return result; // nothing to add, nothing to remove: touch nothing
        }
        var name = galleryKeyName(gallery);
        var groups = thumbnailGroups(gallery);
        var wanted = [];

        groups.forEach(function (group, g) {
            var label = group.kind === "strip" ? "strip" : group.kind === "grid" ? "grid" : "list" + g;
            group.items.forEach(function (item, k) {
                var entry = images && Object.prototype.hasOwnProperty.call(images, k) ? images[k] : null;
                if (entry) {
                    var variant = group.kind === "strip" ? "small" : "thumb";
                    if (ensureBadge(item, entry, variant, ID_PREFIX + name + "-" + label + "-" + k, true)) {
                        result.changed++;
                    }
                    wanted.push(ownBadge(item));
                    result.badges++;
                } else if (removeBadge(item)) {
                    result.changed++;
                }
            });
        });

        var previews = gallery.querySelectorAll(".preview");
        var selected = selectedIndex(groups);
        for (var p = 0; p < previews.length; p++) {
            var preview = previews[p];
            var entry = images && selected >= 0 && Object.prototype.hasOwnProperty.call(images, selected) ? images[selected] : null;
            if (entry && p === 0) {
                if (ensureBadge(preview, entry, "preview", ID_PREFIX + name + "-preview", false)) {
                    result.changed++;
                }
                wanted.push(ownBadge(preview));
                result.badges++;
            } else if (removeBadge(preview)) {
                result.changed++;
            }
        }

        // Stray badges (a thumbnail that left its list, an element we no longer recognise).
        var all = Array.prototype.slice.call(gallery.getElementsByClassName(CLS_BADGE));
        all.forEach(function (badge) {
            if (wanted.indexOf(badge) < 0 && badge.parentNode) {
                var host = badge.parentNode;
                host.removeChild(badge);
                unlinkDescription(host);
                result.changed++;
            }
        });
        return result;
    }

    function findSummary(gallery) {
        var parent = gallery.parentNode;
        if (!parent || !parent.children) {
            return null;
        }
        var key = galleryKeyName(gallery);
        for (var i = 0; i < parent.children.length; i++) {
            var child = parent.children[i];
            if (child.classList.contains(CLS_SUMMARY) && child.getAttribute("data-imagereward-for") === key) {
                return child;
            }
        }
        return null;
    }

    /**
     * Shows the one-line job summary just below the gallery element (its next sibling); removes it when the job has
     * no details or overlays are off. Returns true when the DOM changed.
     */
    function applySummary(gallery, parsed, options) {
        if (!gallery || !gallery.parentNode) {
            return false;
        }
        var enabled = !(options && options.enabled === false);
        var text = enabled && parsed && parsed.hasDetails ? summaryText(parsed.summary) : "";
        var element = findSummary(gallery);
        if (!text) {
            if (element) {
                element.parentNode.removeChild(element);
                return true;
            }
            return false;
        }
        var fallback = !!(parsed.summary && parsed.summary.fallback);
        var className = CLS_SUMMARY + (fallback ? " " + CLS_SUMMARY + "--fallback" : "");
        var changed = false;
        if (!element) {
            element = gallery.ownerDocument.createElement("div");
            element.className = className;
            element.id = ID_PREFIX + "summary-" + galleryKeyName(gallery);
            element.setAttribute("data-imagereward-for", galleryKeyName(gallery));
            element.setAttribute("role", "status");
            element.textContent = text;
            gallery.parentNode.insertBefore(element, gallery.nextSibling);
            return true;
        }
        if (element.className !== className) {
            element.className = className;
            changed = true;
        }
        if (element.textContent !== text) {
            element.textContent = text;
            changed = true;
        }
        if (element.previousElementSibling !== gallery) {
            gallery.parentNode.insertBefore(element, gallery.nextSibling);
            changed = true;
        }
        return changed;
    }

    /** Removes every badge and the summary of one gallery (no DOM write when there are none). */
    function clearOverlays(gallery) {
        var changed = applyBadges(gallery, null).changed;
        return changed + (applySummary(gallery, null) ? 1 : 0);
    }

    // ------------------------------------------------------------------------------------------------------------
    // Update loop (browser)
    // ------------------------------------------------------------------------------------------------------------

    /** opts.imagereward_show_overlays, default true (also while opts is not loaded yet). */
    function overlaysEnabled(optionsObject) {
        return !(optionsObject && optionsObject[OPTION_KEY] === false);
    }

    function globalOpts() {
        try {
            /* global opts */
            return typeof opts !== "undefined" ? opts : null;
        } catch (e) {
            return null;
        }
    }

    function appRoot() {
        try {
            /* global gradioApp */
            if (typeof gradioApp === "function") {
                var root = gradioApp();
                if (root && typeof root.querySelector === "function") {
                    return root;
                }
            }
        } catch (e) {
            // fall through to the document
        }
        return typeof document !== "undefined" ? document : null;
    }

    var tabState = {};
    var observed = [];
    var pendingTimer = null;
    var errorLogged = false;

    /** Cheap fingerprint of what the badges depend on besides the info text. */
    function domKey(gallery, enabled) {
        var thumbs = gallery.getElementsByClassName("thumbnail-item").length;
        var badges = gallery.getElementsByClassName(CLS_BADGE).length;
        var previews = gallery.getElementsByClassName("preview").length;
        var selected = -1;
        var selectedItem = gallery.querySelector(".thumbnail-item.selected");
        if (selectedItem) {
            selected = 0;
            for (var sib = selectedItem.previousElementSibling; sib; sib = sib.previousElementSibling) {
                if (sib.classList.contains("thumbnail-item")) {
                    selected++;
                }
            }
        }
        var summary = findSummary(gallery) ? 1 : 0;
        return (enabled ? 1 : 0) + "|" + thumbs + "|" + badges + "|" + previews + "|" + selected + "|" + summary;
    }

    function infoText(root, tab) {
        var field = root.querySelector("#generation_info_" + tab + " textarea") ||
            root.querySelector("#generation_info_" + tab + " input");
        return field && typeof field.value === "string" ? field.value : "";
    }

    function observeGallery(gallery) {
        if (observed.indexOf(gallery) >= 0 || typeof MutationObserver === "undefined") {
            return;
        }
        observed.push(gallery);
        // Selecting a thumbnail or a new job of the same size only changes attributes (class, src), which the
        // WebUI's own observer (childList only) does not report.
        var observer = new MutationObserver(scheduleUpdate);
        observer.observe(gallery, {attributes: true, attributeFilter: ["class", "src"], subtree: true});
    }

    /**
     * Brings one tab's gallery up to date. Bails out (no parsing, no DOM work) when neither the info text nor the
     * gallery's fingerprint changed since the last call. Returns true when it did work.
     */
    function updateTab(root, tab) {
        var gallery = root.querySelector("#" + tab + "_gallery");
        if (!gallery) {
            return false;
        }
        observeGallery(gallery);
        var enabled = overlaysEnabled(globalOpts());
        var text = infoText(root, tab);
        var state = tabState[tab];
        if (state && state.gallery === gallery && state.text === text && state.key === domKey(gallery, enabled)) {
            return false;
        }
        var parsed = state && state.text === text ? state.parsed : parseGenerationInfo(text);
        var options = {enabled: enabled};
        applyBadges(gallery, parsed, options);
        applySummary(gallery, parsed, options);
        tabState[tab] = {gallery: gallery, text: text, parsed: parsed, key: domKey(gallery, enabled)};
        return true;
    }

    /** One pass over both tabs; safe to call as often as wanted. */
    function update() {
        var root = appRoot();
        if (!root) {
            return 0;
        }
        var worked = 0;
        for (var i = 0; i < TABS.length; i++) {
            try {
                if (updateTab(root, TABS[i])) {
                    worked++;
                }
            } catch (e) {
                if (!errorLogged && typeof console !== "undefined") {
                    errorLogged = true;
                    console.error("[ImageReward] overlay update failed:", e);
                }
            }
        }
        return worked;
    }

    function scheduleUpdate() {
        if (pendingTimer !== null) {
            return;
        }
        pendingTimer = setTimeout(function () {
            pendingTimer = null;
            update();
        }, 30);
    }

    /** Forgets the loop's memory (tests; or to force a full pass). */
    function reset() {
        tabState = {};
        if (pendingTimer !== null) {
            clearTimeout(pendingTimer);
            pendingTimer = null;
        }
    }

    var installed = false;

    /** Registers the loop with the WebUI's callbacks; does nothing when they are missing. */
    function install() {
        if (installed) {
            return false;
        }
        /* global onUiLoaded, onAfterUiUpdate, onUiUpdate, onOptionsChanged */
        var hasAfter = typeof onAfterUiUpdate === "function";
        var hasUpdate = typeof onUiUpdate === "function";
        var hasLoaded = typeof onUiLoaded === "function";
        if (!hasAfter && !hasUpdate && !hasLoaded) {
            return false;
        }
        installed = true;
        if (hasAfter) {
            onAfterUiUpdate(update);
        } else if (hasUpdate) {
            onUiUpdate(scheduleUpdate);
        }
        if (hasLoaded) {
            onUiLoaded(update);
        }
        if (typeof onOptionsChanged === "function") {
            onOptionsChanged(update);
        }
        return true;
    }

    var api = {
        version: 1,
        // pure logic
        parseGenerationInfo: parseGenerationInfo,
        parseInfotextScore: parseInfotextScore,
        splitSettingsLine: splitSettingsLine,
        formatScore: formatScore,
        scoreHue: scoreHue,
        scoreColor: scoreColor,
        badgeTooltip: badgeTooltip,
        summaryText: summaryText,
        overlaysEnabled: overlaysEnabled,
        // DOM, on a given gallery element
        applyBadges: applyBadges,
        applySummary: applySummary,
        clearOverlays: clearOverlays,
        // loop
        update: update,
        updateTab: updateTab,
        scheduleUpdate: scheduleUpdate,
        reset: reset,
        install: install,
    };

    if (typeof window !== "undefined" && window && !window.imageRewardOverlay) {
        window.imageRewardOverlay = api;
    }
    install();
    if (typeof module !== "undefined" && module.exports) {
        module.exports = api;
    }
})();
