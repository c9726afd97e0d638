/*
 * sd-webui-imagereward: score badges on the txt2img / img2img output galleries.
 *
 * Data source: the hidden generation-info textbox (#generation_info_<tab> textarea), which holds the WebUI's
 * Processed.js() JSON. Each badge shows the score its image's infotext writes under the key of the infotext's scorer
 * ("ImageReward: 0.812", "PickScore: 21.312"; what the saved file says), with that scorer's decimals and colour range;
 * extra_generation_params["ImageReward details"] adds rank and group where its score agrees.
 * Nothing is ever read back from the page's rendered HTML.
 *
 * Layout: the pure helpers live in imagereward-logic.js; here the DOM helpers that work on a given gallery element
 * (no globals needed, so they run under jsdom), then the update loop and its registration with the WebUI's
 * callbacks, which only happens when those callbacks exist. Global: window.imageRewardOverlay (with the pure
 * helpers too); under Node the same object is module.exports.
 */
(function () {
    "use strict";

    // The pure part: javascript/imagereward-logic.js (loaded first by the WebUI; required under Node).
    var L = typeof window !== "undefined" && window && window.imageRewardLogic
        ? window.imageRewardLogic
        : typeof require === "function" ? require("./imagereward-logic.js") : null;
    if (!L) {
        if (typeof console !== "undefined") {
            console.error("sd-webui-imagereward: imagereward-logic.js did not load; no score badges");
        }
        return;
    }
    var splitSettingsLine = L.splitSettingsLine;
    var parseInfotextScore = L.parseInfotextScore;
    var readInfotext = L.readInfotext;
    var parseGenerationInfo = L.parseGenerationInfo;
    var formatScore = L.formatScore;
    var scoreHue = L.scoreHue;
    var scoreColor = L.scoreColor;
    var showsBest = L.showsBest;
    var entryDigits = L.entryDigits;
    var badgeTooltip = L.badgeTooltip;
    var summaryText = L.summaryText;
    var OPTION_KEY = L.OPTION_KEY;
    var TABS = L.TABS;
    var STAR = L.STAR;
    var CLS_BADGE = L.CLS_BADGE;
    var CLS_SUMMARY = L.CLS_SUMMARY;
    var ID_PREFIX = L.ID_PREFIX;

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
        if (entry.status) {  // "unfinished · not saved"; the strip's small thumbnails take its first word
            return variant === "small" ? entry.status.split(/\s/)[0] : entry.status;
        }
        var text = formatScore(entry.score, entryDigits(entry));
        if (variant === "small") {
            // The strip's thumbnails are about 36px wide: the same decimals without the leading zero fit.
            text = text.replace(/^(\u2212?)0\./, "$1.");
        }
        if (variant === "preview" && entry.rank !== null && entry.groupSize !== null && entry.groupSize > 1) {
            text += " \u00b7 rank " + entry.rank + "/" + entry.groupSize;
        }
        return text;
    }

    function badgeSignature(entry, variant, id) {
        return [variant, id, formatScore(entry.score, entryDigits(entry)), showsBest(entry) ? 1 : 0, badgeText(entry, variant),
            badgeTooltip(entry), scoreColor(entry.score, entry.scorer)].join("|");
    }

    function fillBadge(doc, badge, entry, variant, id, signature) {
        var best = showsBest(entry);
        badge.className = CLS_BADGE + " " + CLS_BADGE + "--" + variant + (best ? " " + CLS_BADGE + "--best" : "") +
            (entry.status ? " " + CLS_BADGE + "--status" : "");
        badge.id = id;
        badge.title = badgeTooltip(entry);
        badge.setAttribute("data-imagereward-sig", signature);
        badge.style.setProperty("--imagereward-color", scoreColor(entry.score, entry.scorer));
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

    // SD.Next's modern UI draws its thumbnails with object-fit: scale-down at object-position 50% 0%: a portrait or a
    // small picture sits centred at the top of its cell with empty bands beside it, and a badge at the cell's corner
    // would hang off it. There the badge gets the picture's corner and width as custom properties, to which style.css
    // adds each variant's inset (Forge Neo's thumbnails, object-fit contain, get it too for a non-square picture).
    // Where the picture starts at the cell's corner (A1111, reForge: object-fit cover) nothing is written and the
    // stylesheet alone places the badge.
    var PLACEMENT = ["--imagereward-left", "--imagereward-top", "--imagereward-width"];
    var watchedImages = typeof WeakSet === "function" ? new WeakSet() : null;

    /** The PLACEMENT values for a thumbnail's badge ("40px"), or "" each where the stylesheet alone places it. */
    function placementOf(host) {
        var img = host.querySelector("img");
        var view = host.ownerDocument.defaultView;
        var at = null;
        // offsetLeft/Top count from the host's corner only where the host is the img's offsetParent.
        if (img && img.offsetParent === host && view && view.getComputedStyle) {
            var style = view.getComputedStyle(img);
            var rect = L.pictureRect(img.clientWidth, img.clientHeight, img.naturalWidth, img.naturalHeight,
                style.getPropertyValue("object-fit"), style.getPropertyValue("object-position"));
            at = [img.offsetLeft + img.clientLeft + rect.left, img.offsetTop + img.clientTop + rect.top, rect.width]
                .map(Math.round);
        }
        var moved = at !== null && (at[0] !== 0 || at[1] !== 0);
        return PLACEMENT.map(function (name, i) {
            return moved ? at[i] + "px" : "";
        });
    }

    /**
     * Puts the badges of these thumbnails on their pictures' corners: measures them all, then writes (one layout, not
     * one per badge); no DOM write where a badge is already in place. Returns the number of badges moved.
     */
    function placeBadges(hosts) {
        var placements = hosts.map(placementOf);
        var moved = 0;
        hosts.forEach(function (host, k) {
            var badge = ownBadge(host);
            var changed = false;
            PLACEMENT.forEach(function (name, i) {
                var value = placements[k][i];
                if (!badge || badge.style.getPropertyValue(name) === value) {
                    return;
                }
                if (value) {
                    badge.style.setProperty(name, value);
                } else {
                    badge.style.removeProperty(name);
                }
                changed = true;
            });
            moved += changed ? 1 : 0;
        });
        return moved;
    }

    /** Places the thumbnail's badge again whenever its picture (re)loads: only then is its natural size known. */
    function watchPicture(host) {
        var img = host.querySelector("img");
        if (!img || !watchedImages || watchedImages.has(img)) {
            return; // one listener per img, for the img's life
        }
        watchedImages.add(img);
        img.addEventListener("load", function () {
            placeBadges([host]);
        });
    }

    /** The thumbnails of a gallery that carry a badge. */
    function badgedThumbnails(gallery) {
        var badges = gallery.querySelectorAll(".thumbnail-item > ." + CLS_BADGE + ", .preview > ." + CLS_BADGE);
        return Array.prototype.map.call(badges, function (badge) {
            return badge.parentNode;
        });
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
            // SD.Next's modern UI leaves its thumbnails unpositioned: the badge needs its host as containing block.
            var view = doc.defaultView;
            if (view && view.getComputedStyle && view.getComputedStyle(host).position === "static") {
                host.style.position = "relative";
            }
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
        var thumbnails = [];

        groups.forEach(function (group, g) {
            var label = group.kind === "strip" ? "strip" : group.kind === "grid" ? "grid" : "list" + g;
            group.items.forEach(function (item, k) {
                var entry = images && Object.prototype.hasOwnProperty.call(images, k) ? images[k] : null;
                if (entry) {
                    var variant = group.kind === "strip" ? "small" : "thumb";
                    if (ensureBadge(item, entry, variant, ID_PREFIX + name + "-" + label + "-" + k, true)) {
                        result.changed++;
                    }
                    watchPicture(item);
                    thumbnails.push(item);
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
                watchPicture(preview);
                thumbnails.push(preview); // its picture is drawn with contain: a portrait one sits between bands
                wanted.push(ownBadge(preview));
                result.badges++;
            } else if (removeBadge(preview)) {
                result.changed++;
            }
        }

        result.changed += placeBadges(thumbnails);

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
        // A resized gallery resizes its cells, which moves a picture centred in its cell (SD.Next): follow it.
        if (typeof ResizeObserver !== "undefined") {
            new ResizeObserver(function () {
                placeBadges(badgedThumbnails(gallery));
            }).observe(gallery);
        }
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
    /**
     * The threshold slider's knob after a paste-back: the WebUI sets the pasted value while the slider still has the
     * old scorer's range, the browser clamps the range input, and when the range then changes the value has not, so
     * the knob stays at the old limit (the number box and the job use the right value). Move the knob to the number.
     */
    function syncThresholdKnobs(root) {
        var moved = 0;
        ["txt2img", "img2img"].forEach(function (tab) {
            var box = root.querySelector("#script_" + tab + "_imagereward_imagereward_threshold");
            if (!box) {
                return;
            }
            var number = box.querySelector("input[type=number]");
            var range = box.querySelector("input[type=range]");
            if (!number || !range) {
                return;
            }
            var wanted = Number(number.value);
            var low = Number(range.min);
            var high = Number(range.max);
            if (!isFinite(wanted) || wanted < low || wanted > high || Number(range.value) === wanted) {
                return;
            }
            var before = range.value;
            range.value = String(wanted);
            if (Number(range.value) !== wanted) {
                range.value = before; // not a value of the range's steps: leave the knob to the WebUI
                return;
            }
            range.dispatchEvent(new Event("input", {bubbles: true}));
            moved++;
        });
        return moved;
    }

    function update() {
        var root = appRoot();
        if (!root) {
            return 0;
        }
        try {
            syncThresholdKnobs(root);
        } catch (e) {
            // a display nicety: never let it stop the badges
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
        // pure logic (from imagereward-logic.js)
        logic: L,
        parseGenerationInfo: parseGenerationInfo,
        parseInfotextScore: parseInfotextScore,
        readInfotext: readInfotext,
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
        syncThresholdKnobs: syncThresholdKnobs,
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
