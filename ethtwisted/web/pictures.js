// The dashboard's pictures, drawn as inline SVG from the JSON API's answers alone: the
// propagation histogram and sparklines (/api/v1/blocks/<sha256>'s sightings), the block times
// and the chain as the fleet saw it (/api/v1/chains/<id>/blocks).  Every number drawn is one
// of those answers' or a count of them; each shape carries it in a data- attribute and a title.
var Pictures = (function () {
  "use strict";
  var svg = Page.svg;

  function titled(e, text) { e.appendChild(svg("title", {}, text)); return e; }
  function canvas(box, width, height, label) {
    box.replaceChildren();
    var picture = svg("svg", { viewBox: "0 0 " + width + " " + height, role: "img",
                               "aria-label": label, "class": "picture" });
    box.appendChild(picture);
    return picture;
  }
  function ms(v) {
    if (v < 1000) { return Math.round(v) + " ms"; }
    return (v / 1000).toFixed(v < 10000 ? 1 : 0) + " s";
  }
  function seconds(s) { return (Math.round(s * 10) / 10) + " s"; }
  function clip(text, n) { return text.length > n ? text.slice(0, n - 1) + "…" : text; }
  function hash(h) { return h ? h.slice(0, 10) + "…" : "–"; }

  // Propagation: how far behind the fleet's first sighting each sighting came, in bins (ms).
  var EDGES = [0, 100, 200, 500, 1000, 2000, 5000, 10000, 30000];

  function binOf(delay) {
    for (var i = EDGES.length - 1; i >= 0; i--) { if (delay >= EDGES[i]) { return i; } }
    return 0;  // a negative delay cannot be: the first sighting is the earliest
  }
  function binLabel(i) {
    if (i === EDGES.length - 1) { return "≥ " + ms(EDGES[i]); }
    if (i === 0) { return "< " + ms(EDGES[1]); }
    var low = ms(EDGES[i]), high = ms(EDGES[i + 1]);
    var unit = function (t) { return t.replace(/^[\d.]+ /, ""); };
    return (unit(low) === unit(high) ? low.replace(/ .*/, "") : low) + "–" + high;
  }

  // blocks: [{number, chain_id, sightings: [{client, delay_ms}]}], each sighting counted once.
  function histogram(box, blocks) {
    var bins = EDGES.map(function () { return { count: 0, blocks: {} }; });
    var total = 0;
    blocks.forEach(function (b) {
      b.sightings.forEach(function (s) {
        if (typeof s.delay_ms !== "number") { return; }
        var bin = bins[binOf(s.delay_ms)];
        var key = "#" + b.number + (b.chain_id === null ? "" : " (chain " + b.chain_id + ")");
        bin.count += 1;
        bin.blocks[key] = (bin.blocks[key] || 0) + 1;
        total += 1;
      });
    });
    var W = 1280, H = 190, left = 40, bottom = 34, top = 18;
    var p = canvas(box, W, H, "sightings per delay behind the fleet's first sighting");
    var max = Math.max.apply(null, bins.map(function (b) { return b.count; }).concat([1]));
    var step = (W - left) / bins.length;
    p.appendChild(svg("line", { x1: left, y1: H - bottom, x2: W, y2: H - bottom, "class": "axis" }));
    p.appendChild(svg("text", { x: 0, y: top + 4 }, max));
    p.appendChild(svg("text", { x: 0, y: H - bottom }, 0));
    bins.forEach(function (bin, i) {
      var x = left + i * step;
      var label = binLabel(i);
      p.appendChild(svg("text", { x: x + step / 2, y: H - bottom + 16, "class": "label",
                                  "text-anchor": "middle", "data-bin": i }, label));
      if (!bin.count) { return; }
      var h = (H - bottom - top) * bin.count / max;
      var names = Object.keys(bin.blocks).map(function (k) { return k + " ×" + bin.blocks[k]; });
      var bar = svg("rect", { x: x + 6, y: H - bottom - h, width: step - 12, height: h,
                              "class": "bar" + (i >= 5 ? " slow" : ""), "data-bin": i,
                              "data-count": bin.count, "data-label": label });
      titled(bar, bin.count + " sightings " + label + " behind the first, of blocks " +
             names.join(", "));
      p.appendChild(bar);
      p.appendChild(svg("text", { x: x + step / 2, y: H - bottom - h - 4, "class": "count",
                                  "text-anchor": "middle" }, bin.count));
    });
    p.appendChild(svg("text", { x: W, y: H - 3, "text-anchor": "end", "class": "note" },
      total + " sightings of " + blocks.length + " blocks, by delay behind the fleet's first"));
  }

  // A client's delays over the blocks drawn (oldest first; null: it has no sighting of one).
  function sparkline(delays) {
    var W = 96, H = 20;
    var p = svg("svg", { viewBox: "0 0 " + W + " " + H, "class": "spark", role: "img" });
    var shown = delays.filter(function (d) { return typeof d === "number"; });
    p.dataset.points = String(shown.length);
    if (!shown.length) { return p; }
    var max = Math.max.apply(null, shown.concat([1]));
    var step = delays.length > 1 ? (W - 4) / (delays.length - 1) : 0;
    var line = [];
    function flush() {
      if (line.length === 1) {
        var xy = line[0].split(",");
        p.appendChild(svg("circle", { cx: xy[0], cy: xy[1], r: 1.5 }));
      } else if (line.length) {
        p.appendChild(svg("polyline", { points: line.join(" ") }));
      }
      line = [];
    }
    delays.forEach(function (d, i) {
      if (typeof d !== "number") { flush(); return; }
      line.push((2 + i * step).toFixed(1) + "," + (H - 2 - (H - 4) * d / max).toFixed(1));
    });
    flush();
    titled(p, "delay behind the fleet's first sighting over the last " + delays.length +
           " blocks: " + delays.map(function (d) { return d === null ? "–" : ms(d); }).join(", "));
    return p;
  }

  function canonicalOf(chain) {
    return chain.blocks.filter(function (b) { return b.canonical; })
      .sort(function (a, b) { return a.number - b.number; });
  }

  // Block times: seconds between consecutive canonical blocks (by their timestamps), one bar
  // per height whose parent height is stored too; a mark where a reorg replaced blocks.
  function blockTimes(box, chain) {
    var canonical = canonicalOf(chain);
    var low = chain.from + 1, high = Math.max(chain.to, low);
    var slots = high - low + 1;
    var W = 1280, H = 150, left = 40, bottom = 20, top = 16;
    var p = canvas(box, W, H, "seconds between consecutive canonical blocks of chain " + chain.chain_id);
    var times = [];
    for (var i = 1; i < canonical.length; i++) {
      var b = canonical[i], parent = canonical[i - 1];
      if (b.number === parent.number + 1 && typeof b.timestamp === "number" &&
          typeof parent.timestamp === "number") {
        times.push({ number: b.number, seconds: b.timestamp - parent.timestamp });
      }
    }
    var max = Math.max.apply(null, times.map(function (t) { return t.seconds; }).concat([1]));
    var step = (W - left) / slots;
    p.appendChild(svg("line", { x1: left, y1: H - bottom, x2: W, y2: H - bottom, "class": "axis" }));
    p.appendChild(svg("text", { x: 0, y: top + 4 }, seconds(max)));
    p.appendChild(svg("text", { x: 0, y: H - bottom }, "0 s"));
    times.forEach(function (t) {
      var h = (H - bottom - top) * Math.max(t.seconds, 0) / max;
      var bar = svg("rect", { x: left + (t.number - low) * step + 0.5, y: H - bottom - h,
                              width: Math.max(step - 1, 1), height: Math.max(h, 1), "class": "bar",
                              "data-number": t.number, "data-seconds": t.seconds });
      p.appendChild(titled(bar, "#" + t.number + ": " + seconds(t.seconds) + " after #" + (t.number - 1)));
    });
    chain.reorgs.forEach(function (r) {
      if (r.number < low || r.number > high) { return; }
      var x = left + (r.number - low + 0.5) * step;
      var mark = svg("g", { "class": "reorg", "data-number": r.number, "data-depth": r.depth });
      mark.appendChild(svg("line", { x1: x, y1: top, x2: x, y2: H - bottom }));
      mark.appendChild(svg("path", { d: "M" + (x - 5) + " " + (top - 8) + "h10l-5 8z" }));
      p.appendChild(titled(mark, "reorg at #" + r.number + ": " + r.depth +
        (r.depth === 1 ? " block" : " blocks") + " replaced (" + hash(r.orphaned) + ")"));
    });
    var mean = times.length ? times.reduce(function (s, t) { return s + t.seconds; }, 0) / times.length : null;
    p.appendChild(svg("text", { x: left, y: H - 4, "class": "note" }, "#" + low));
    p.appendChild(svg("text", { x: W, y: H - 4, "text-anchor": "end", "class": "note" }, "#" + high));
    p.appendChild(svg("text", { x: W / 2, y: H - 4, "text-anchor": "middle", "class": "note" },
      times.length + " block times, mean " + (mean === null ? "–" : seconds(mean)) +
      ", " + chain.reorgs.length + (chain.reorgs.length === 1 ? " reorg" : " reorgs")));
    return times;
  }

  function inGap(chain, n) {
    return chain.gaps.some(function (g) { return g[0] <= n && n <= g[1]; });
  }

  // The chain as the fleet saw it: the last `heights` heights up to the head, canonical blocks
  // in a line, orphaned ones below their height, each with who reported it first; gaps drawn
  // as gaps.  pick(block) is called when a block is clicked (or Enter on it).
  function chainView(box, chain, heights, pick, picked) {
    var high = chain.to, low = Math.max(chain.from, high - heights + 1);
    var by = {};
    chain.blocks.forEach(function (b) {
      if (b.number >= low && b.number <= high) { (by[b.number] = by[b.number] || []).push(b); }
    });
    var rows = 1;
    Object.keys(by).forEach(function (n) { rows = Math.max(rows, by[n].length); });
    var col = 62, bw = 56, bh = 36, rowH = 48, top = 8;
    var W = col * (high - low + 1), H = top + rowH * rows + 4;
    var p = canvas(box, W, H, "the last " + (high - low + 1) + " heights of chain " + chain.chain_id);
    box.style.maxWidth = W + "px";
    var where = {};
    for (var n = low; n <= high; n++) {
      var x = (n - low) * col + 3;
      var here = (by[n] || []).slice().sort(function (a, b) { return (b.canonical ? 1 : 0) - (a.canonical ? 1 : 0); });
      if (inGap(chain, n)) {
        p.appendChild(titled(svg("rect", { x: x, y: top, width: bw, height: bh, rx: 4, "class": "gap",
                                          "data-number": n }), "#" + n + ": no block stored"));
        p.appendChild(svg("text", { x: x + bw / 2, y: top + 14, "text-anchor": "middle", "class": "gap-text" }, String(n).slice(-5)));
        p.appendChild(svg("text", { x: x + bw / 2, y: top + 28, "text-anchor": "middle", "class": "gap-text" }, "gap"));
        continue;
      }
      var row = here.length && here[0].canonical ? 0 : 1;
      here.forEach(function (b) {
        var y = top + row * rowH;
        where[b.hash] = { x: x, y: y };
        var g = svg("g", { "class": "block " + (b.canonical ? "canonical" : "orphan") +
                            (picked === b.sha256 ? " picked" : ""),
                            "data-sha256": b.sha256, "data-number": b.number, "data-client": b.client,
                            tabindex: 0 });
        g.appendChild(svg("rect", { x: x, y: y, width: bw, height: bh, rx: 4 }));
        g.appendChild(svg("text", { x: x + bw / 2, y: y + 14, "text-anchor": "middle" }, String(b.number).slice(-5)));
        g.appendChild(svg("text", { x: x + bw / 2, y: y + 28, "text-anchor": "middle", "class": "who" }, clip(b.client, 10)));
        titled(g, "#" + b.number + " " + hash(b.hash) + (b.canonical ? " canonical" : " orphaned") +
               ", first reported by " + b.client + "; click for who saw it when");
        g.addEventListener("click", function () { pick(b); });
        g.addEventListener("keydown", function (e) {
          if (e.key === "Enter" || e.key === " ") { e.preventDefault(); pick(b); }
        });
        p.appendChild(g);
        row += 1;
      });
    }
    // The links to each block's parent, where both are drawn.
    chain.blocks.forEach(function (b) {
      var to = where[b.hash], from = where[b.parent_hash];
      if (!to || !from) { return; }
      var link = svg("line", { x1: from.x + bw, y1: from.y + bh / 2, x2: to.x, y2: to.y + bh / 2,
                               "class": b.canonical ? "link" : "link orphan" });
      p.insertBefore(link, p.firstChild);
    });
  }

  // Payloads first seen per minute over the last hour (/api/v1/arrivals), at `now`.
  function arrivals(chart, a, now) {
    var minutes = 60;
    var first = a.since;
    var counts = new Array(minutes).fill(0);
    a.counts.forEach(function (pair) {
      var i = Math.round((pair[0] - first) / a.bucket);
      if (i >= 0 && i < minutes) { counts[i] = pair[1]; }
    });
    var current = Math.floor((now - first) / a.bucket);
    chart.replaceChildren();
    var W = 960, H = 170, left = 36, bottom = 22, top = 10;
    var max = Math.max.apply(null, counts.concat([1]));
    var step = (W - left) / minutes;
    chart.appendChild(svg("line", { x1: left, y1: H - bottom, x2: W, y2: H - bottom, "class": "axis" }));
    chart.appendChild(svg("text", { x: 0, y: top + 8 }, String(max)));
    chart.appendChild(svg("text", { x: 0, y: H - bottom }, "0"));
    counts.forEach(function (n, i) {
      if (!n) { return; }
      var h = (H - bottom - top) * n / max;
      var bar = svg("rect", { x: left + i * step + 1, y: H - bottom - h, width: Math.max(step - 2, 1),
                              height: h, "class": i === current ? "bar current" : "bar" });
      bar.appendChild(svg("title", {}, n + " at " + new Date((first + i * a.bucket) * 1000).toLocaleTimeString()));
      chart.appendChild(bar);
    });
    [[0, "60 min ago"], [30, "30 min ago"], [59, "now"]].forEach(function (t) {
      var x = left + t[0] * step + (t[0] === 59 ? step - 22 : 0);
      chart.appendChild(svg("text", { x: x, y: H - 6 }, t[1]));
    });
  }

  return { arrivals: arrivals, histogram: histogram, sparkline: sparkline, blockTimes: blockTimes,
           chainView: chainView, canonicalOf: canonicalOf, binOf: binOf, EDGES: EDGES };
})();
