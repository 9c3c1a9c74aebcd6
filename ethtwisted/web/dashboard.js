// The dashboard: polls the JSON API (with the stats token as a bearer header) and shows its
// answers: the heads, the rate, the pictures (pictures.js), the fleet, the changes of state
// and the recent blocks.
(function () {
  "use strict";
  var KEY = "ethtwisted-token";
  var POLL_MS = 2000;
  var params = new URLSearchParams(location.search);
  var P = Page, $ = P.$, el = P.el, chip = P.chip, number = P.number, age = P.age, now = P.now;
  var token = null;
  if (params.has("token")) {
    token = params.get("token");
    try { sessionStorage.setItem(KEY, token); } catch (e) { /* memory only */ }
    params.delete("token");
    var rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
  } else {
    try { token = sessionStorage.getItem(KEY); } catch (e) { token = null; }
  }

  var EVENTS = 20;
  var CLIENT_PAGES = 50;    // the most pages of /api/v1/clients read per poll
  var CHAINS = 4;           // the chains drawn
  var TIMES = 100;          // heights of the block times
  var HEIGHTS = 20;         // heights of the chain as the fleet saw it
  var BLOCKS = 20;          // blocks per chain in the propagation picture and sparklines
  var YOUNG = 60;           // a block's sightings are read again while it is this young (s)
  var last = null;
  var opened = null;  // the recent block whose sightings are shown: {sha256, sightings, error}
  var picked = null;  // the block picked in the chain picture, likewise
  var sightings = {};  // sha256 → {at (when read), sightings}

  function get(path) {
    var headers = token ? { "Authorization": "Bearer " + token } : {};
    return fetch(path, { headers: headers, cache: "no-store" }).then(function (r) {
      if (r.status === 401) {
        try { sessionStorage.removeItem(KEY); } catch (e) { /* nothing stored */ }
        throw new Error("the stats token is missing or wrong: reload with ?token=");
      }
      return r.json().then(function (body) {
        if (!r.ok) { throw new Error(body.error || ("HTTP " + r.status)); }
        return body;
      });
    });
  }

  // Every client, page after page while the API says there are more (`next`, with
  // ?after=); an API without paging answers them all at once.
  function allClients() {
    var clients = [];
    function page(after, n) {
      var path = "/api/v1/clients?limit=1000" + (after === null ? "" : "&after=" + encodeURIComponent(after));
      return get(path).then(function (body) {
        clients = clients.concat(body.clients);
        var next = typeof body.next === "string" ? body.next : null;
        return next !== null && n < CLIENT_PAGES ? page(next, n + 1) : clients;
      });
    }
    return page(null, 1);
  }

  function chainBlocks(heads) {
    return Promise.all(heads.filter(function (h) { return h.chain_id !== null; }).slice(0, CHAINS)
      .map(function (h) {
        var low = Math.max(0, h.number - TIMES);
        return get("/api/v1/chains/" + h.chain_id + "/blocks?from=" + low + "&to=" + h.number)
          .catch(function () { return null; });
      })).then(function (chains) { return chains.filter(function (c) { return c !== null; }); });
  }

  // Every POLL_MS, or four times as long as the last poll took when that is more: a large
  // fleet's reads cost the server more than one dashboard should take of it.
  function poll() {
    var started = Date.now();
    // The changes of state are shown when the store has them; their trouble is said in place.
    var events = get("/api/v1/events?limit=" + EVENTS).then(function (body) {
      return { events: Array.isArray(body.events) ? body.events : [], error: null };
    }, function (err) { return { events: [], error: err.message }; });
    var heads = get("/api/v1/head");
    Promise.all([
      heads, allClients(), get("/api/v1/blocks?limit=15"), get("/api/v1/arrivals?minutes=60"),
      events, heads.then(function (h) { return chainBlocks(h.heads); })
    ]).then(function (answers) {
      P.setNow(answers[0].now);
      last = { heads: answers[0].heads, clients: answers[1], blocks: answers[2].blocks,
               arrivals: answers[3], events: answers[4], chains: answers[5] };
      render();
      var status = $("status");
      status.className = "live";
      status.textContent = "live";
      return readSightings();
    }).catch(function (err) {
      var status = $("status");
      status.className = "down";
      status.textContent = err.message;
    }).then(function () { setTimeout(poll, Math.max(POLL_MS, 4 * (Date.now() - started))); });
  }

  // The blocks of the propagation picture: the last BLOCKS canonical blocks of each chain.
  function propagationBlocks() {
    var blocks = [];
    (last ? last.chains : []).forEach(function (chain) {
      Pictures.canonicalOf(chain).slice(-BLOCKS).forEach(function (b) {
        blocks.push({ sha256: b.sha256, number: b.number, chain_id: chain.chain_id,
                      first_seen: b.first_seen });
      });
    });
    return blocks;
  }

  // Who saw each of them when, read once, and again while the block is young; four at a time.
  function readSightings() {
    var wanted = propagationBlocks().filter(function (b) {
      var known = sightings[b.sha256];
      return !known || (known.at - b.first_seen < YOUNG && now() - known.at > POLL_MS / 1000);
    });
    var keep = {};
    propagationBlocks().forEach(function (b) { keep[b.sha256] = true; });
    Object.keys(sightings).forEach(function (sha) { if (!keep[sha]) { delete sightings[sha]; } });
    function next() {
      var b = wanted.shift();
      if (!b) { return Promise.resolve(); }
      return get("/api/v1/blocks/" + b.sha256).then(function (body) {
        sightings[b.sha256] = { at: now(), sightings: Array.isArray(body.sightings) ? body.sightings : [] };
      }, function () { /* drawn without it; read again at the next poll */ }).then(next);
    }
    if (!wanted.length) { return Promise.resolve(); }
    return Promise.all([next(), next(), next(), next()]).then(function () {
      renderPropagation();
      renderFleet();
    });
  }

  function render() {
    if (!last) { return; }
    renderHeads(last.heads);
    renderRate(last.arrivals);
    renderFleet();
    renderPictures();
    renderEvents(last.events);
    renderBlocks(last.blocks);
    Pictures.arrivals($("chart"), last.arrivals, now());
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  }

  function renderHeads(heads) {
    var box = $("heads");
    box.replaceChildren();
    if (!heads.length) { box.appendChild(el("div", "empty", "no blocks yet")); return; }
    heads.forEach(function (h) {
      var row = el("div", "head");
      row.dataset.chain = P.chainName(h.chain_id);
      row.appendChild(el("span", "chain", "chain " + P.chainName(h.chain_id)));
      row.appendChild(el("span", "number", "#" + number(h.number)));
      row.title = h.hash || "";
      box.appendChild(row);
    });
  }

  function renderRate(a) {
    var rate = a.rate || {};
    $("bpm").textContent = typeof rate.per_minute === "number" ? rate.per_minute.toFixed(1) : "–";
    var over = typeof rate.seconds === "number" ? rate.seconds : 600;
    $("bpm-note").textContent = "payloads first seen, over the last " +
      (over >= 600 ? "10 minutes" : age(over) + " (since the first)");
  }

  // Each client's delay at each block of its chain's propagation picture, oldest first.
  function clientDelays() {
    var delays = {};
    var byChain = {};
    propagationBlocks().forEach(function (b) { (byChain[b.chain_id] = byChain[b.chain_id] || []).push(b); });
    Object.keys(byChain).forEach(function (chainId) {
      var blocks = byChain[chainId];
      blocks.forEach(function (b, i) {
        var known = sightings[b.sha256];
        if (!known) { return; }
        known.sightings.forEach(function (s) {
          var d = delays[s.client] || (delays[s.client] = new Array(blocks.length).fill(null));
          if (d.length === blocks.length) { d[i] = s.delay_ms; }
        });
      });
    });
    return delays;
  }

  function renderFleet() {
    if (last) { Fleet.show(last.clients, clientDelays()); }
  }

  // -- the pictures ------------------------------------------------------------------------

  function renderPropagation() {
    var blocks = propagationBlocks().filter(function (b) { return sightings[b.sha256]; })
      .map(function (b) {
        return { number: b.number, chain_id: b.chain_id, sightings: sightings[b.sha256].sightings };
      });
    Pictures.histogram($("propagation"), blocks);
  }

  function renderPictures() {
    renderPropagation();
    var times = $("block-times"), chains = $("chain-view");
    times.replaceChildren();
    chains.replaceChildren();
    if (!last.chains.length) {
      times.appendChild(el("div", "empty", "no blocks yet"));
      chains.appendChild(el("div", "empty", "no blocks yet"));
    }
    last.chains.forEach(function (chain) {
      var box = el("div", "chain-picture");
      box.dataset.chain = String(chain.chain_id);
      box.appendChild(el("div", "sub", "chain " + chain.chain_id + " · #" + number(chain.from + 1) +
                         " to #" + number(chain.to)));
      var picture = el("div");
      box.appendChild(picture);
      times.appendChild(box);
      Pictures.blockTimes(picture, chain);

      var seen = el("div", "chain-picture");
      seen.dataset.chain = String(chain.chain_id);
      seen.appendChild(el("div", "sub", "chain " + chain.chain_id + " · the last " + HEIGHTS +
                          " heights: canonical in a line, orphaned below; dashed: a gap"));
      var line = el("div", "scroll");
      seen.appendChild(line);
      chains.appendChild(seen);
      Pictures.chainView(line, chain, HEIGHTS, pick, picked && picked.sha256);
    });
    var panel = $("picked");
    panel.replaceChildren();
    if (picked) {
      panel.appendChild(el("div", "sub", "#" + number(picked.number) + " " + P.shortHash(picked.hash) +
                           (picked.canonical ? ", canonical" : ", orphaned") + ": who saw it when"));
      panel.appendChild(sightingsTable(picked));
    }
  }

  function pick(b) {
    if (picked && picked.sha256 === b.sha256) { picked = null; renderPictures(); return; }
    var asked = { sha256: b.sha256, number: b.number, hash: b.hash, canonical: b.canonical,
                  sightings: null, error: null };
    picked = asked;
    renderPictures();
    readBlock(asked, function () { if (picked === asked) { renderPictures(); } });
  }

  function readBlock(asked, done) {
    if (!/^[0-9a-f]{64}$/.test(asked.sha256)) { return; }
    get("/api/v1/blocks/" + asked.sha256).then(function (body) {
      asked.sightings = Array.isArray(body.sightings) ? body.sightings : [];
    }).catch(function (err) {
      asked.error = err.message;
    }).then(done);
  }

  // -- the changes of state and the recent blocks -----------------------------------------

  function renderEvents(answer) {
    var body = document.querySelector("#events tbody");
    body.replaceChildren();
    if (answer.error) { P.emptyRow(body, 4, answer.error); return; }
    answer.events.forEach(function (e) {
      var tr = el("tr", e.event === "entered" ? "entered" : "left");
      tr.dataset.eventId = String(e.id);
      var when = el("td", "num at", age(now() - e.at) + " ago");
      when.title = P.utc(e.at);
      tr.appendChild(when);
      tr.appendChild(el("td", "client", e.client));
      var change = el("td", "change");
      change.appendChild(chip(String(e.state), String(e.state)));
      change.appendChild(document.createTextNode(e.event === "entered" ? " entered" : " left"));
      tr.appendChild(change);
      tr.appendChild(el("td", "text", e.text));
      body.appendChild(tr);
    });
    if (!answer.events.length) { P.emptyRow(body, 4, "no change of state yet"); }
  }

  function renderBlocks(blocks) {
    var body = document.querySelector("#blocks tbody");
    body.replaceChildren();
    blocks.forEach(function (b) {
      var tr = el("tr");
      tr.dataset.sha256 = b.sha256;
      tr.appendChild(el("td", "num", number(b.number)));
      tr.appendChild(el("td", "", P.chainName(b.chain_id)));
      tr.appendChild(el("td", "mono", P.shortHash(b.hash)));
      tr.appendChild(el("td", "num", age(now() - b.first_seen) + " ago"));
      tr.appendChild(el("td", "", b.client));
      tr.appendChild(el("td", "mono", P.shortHash(b.sha256)));
      tr.tabIndex = 0;
      tr.title = "who saw it when";
      tr.addEventListener("click", function () { toggle(b.sha256); });
      tr.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); toggle(b.sha256); }
      });
      body.appendChild(tr);
      if (opened && opened.sha256 === b.sha256) {
        tr.className = "open";
        var row = el("tr", "sightings");
        row.dataset.sightingsOf = b.sha256;
        var td = el("td");
        td.colSpan = 6;
        td.appendChild(sightingsTable(opened));
        row.appendChild(td);
        body.appendChild(row);
      }
    });
    if (!blocks.length) { P.emptyRow(body, 6, "no blocks yet"); }
  }

  function toggle(sha256) {
    if (opened && opened.sha256 === sha256) { opened = null; renderBlocks(last.blocks); return; }
    var asked = { sha256: sha256, sightings: null, error: null };
    opened = asked;
    renderBlocks(last.blocks);
    readBlock(asked, function () { if (opened === asked && last) { renderBlocks(last.blocks); } });
  }

  function sightingsTable(block) {
    if (block.error) { return el("div", "empty", block.error); }
    if (block.sightings === null) { return el("div", "empty", "loading…"); }
    if (!block.sightings.length) { return el("div", "empty", "no sightings kept"); }
    var table = el("table", "seen");
    var head = el("tr");
    ["client", "seen at", "behind the first", "via"].forEach(function (t, i) {
      head.appendChild(el("th", i === 2 ? "num" : "", t));
    });
    table.appendChild(el("thead")).appendChild(head);
    var rows = table.appendChild(el("tbody"));
    block.sightings.forEach(function (s) {
      var row = el("tr");
      row.dataset.client = s.client;
      row.appendChild(el("td", "", s.client));
      row.appendChild(el("td", "mono", new Date(s.seen_at * 1000).toISOString().replace("T", " ").replace("Z", " UTC")));
      row.appendChild(el("td", "num delay", P.delay(s.delay_ms)));
      row.appendChild(el("td", "", s.via));
      rows.appendChild(row);
    });
    return table;
  }

  $("legend").textContent = "A client turns red when the server has it in a state (behind," +
    " stalled, silent, syncing, fork), or when it is more than " + P.LAG_LIMIT +
    " blocks behind the best head of its chain or quiet for over " + P.QUIET_SECONDS +
    " s (change with ?lag=N&quiet=SECONDS). Updates every " + POLL_MS / 1000 +
    " s, or less often while the server is slow to answer.";
  setInterval(function () {
    if (last) { renderFleet(); renderEvents(last.events); renderBlocks(last.blocks); }
  }, 1000);
  poll();
})();
