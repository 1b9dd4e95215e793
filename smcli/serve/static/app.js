// smcli serve's page: search the gallery, show the results, explain one of them.
// Plain DOM, no framework, nothing fetched from anywhere but this server.
"use strict";

const $ = (id) => document.getElementById(id);
let info = null;
let lastQuery = "";
let opened = null; // the result being explained: {id, row}
let opener = null; // the card to give focus back to

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

async function api(path, options) {
  const response = await fetch(path, options);
  let data = null;
  try { data = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) throw new Error((data && data.error) || `${response.status} ${response.statusText}`);
  return data;
}

function say(node, text, isError = false) {
  node.textContent = text;
  node.classList.toggle("error", isError);
}

// -- search ------------------------------------------------------------------------------

async function search(q, k) {
  lastQuery = q;
  say($("status"), `searching for \u201c${q}\u201d\u2026`);
  $("results").replaceChildren();
  try {
    const params = new URLSearchParams({ q, k });
    const data = await api(`/api/search?${params}`);
    history.replaceState(null, "", `?${new URLSearchParams({ q })}`);
    showResults(data);
  } catch (err) {
    say($("status"), err.message, true);
  }
}

function showResults(data) {
  const n = data.results.length;
  say($("status"), `${n} result${n === 1 ? "" : "s"} for \u201c${data.query}\u201d`);
  const items = data.results.map((r) => {
    const card = el("button", { type: "button", class: "card", "data-row": r.row, "data-id": r.id,
                                 "aria-label": `rank ${r.rank}, score ${r.score.toFixed(4)}: ${r.id}` },
      el("img", { src: r.url, alt: r.id, loading: "lazy" }),
      el("span", { class: "meta" }, el("span", { class: "rank", text: `#${r.rank}` }),
         el("span", { class: "score", text: r.score.toFixed(4) })),
      el("span", { class: "id", text: r.id }));
    card.addEventListener("click", () => openExplain(r, card));
    return el("li", {}, card);
  });
  $("results").replaceChildren(...items);
}

// arrow keys move between cards, row by row as the grid lays them out
function moveFocus(event) {
  const cards = [...document.querySelectorAll("#results .card")];
  const at = cards.indexOf(document.activeElement);
  if (at < 0) return;
  const top = cards[0].offsetTop;
  const perRow = Math.max(1, cards.filter((c) => c.offsetTop === top).length);
  const step = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: perRow, ArrowUp: -perRow,
                 Home: -at, End: cards.length - 1 - at }[event.key];
  if (step === undefined) return;
  event.preventDefault();
  cards[Math.min(cards.length - 1, Math.max(0, at + step))].focus();
}

// -- explain -----------------------------------------------------------------------------

function openExplain(result, card) {
  opened = result;
  opener = card;
  $("caption").value = lastQuery;
  $("explain-body").replaceChildren();
  $("explain").showModal();
  explain(lastQuery);
  loadCaptions(result);
}

async function explain(caption) {
  const params = new URLSearchParams({ image: opened.id, caption });
  $("png").href = `/api/explain?${params}&format=png`;
  $("png").setAttribute("download", `explain-${opened.id.replace(/[^\w.-]+/g, "_")}.png`);
  say($("explain-status"), "computing the saliency maps\u2026");
  try {
    const data = await api(`/api/explain?${params}`);
    $("explain-body").replaceChildren(drawExplanation(data, opened));
    say($("explain-status"), `score ${data.score.toFixed(4)}, ${data.steps.length} steps`);
  } catch (err) {
    $("explain-body").replaceChildren();
    say($("explain-status"), err.message, true);
  }
}

function drawExplanation(data, result) {
  const head = el("div", { class: "head" });
  for (const line of data.header) {
    const cls = { "no-selection": "warn", truncated: "warn" }[line.role] || line.role;
    head.append(el("p", { class: cls, text: line.text }));
  }
  const [w, h] = data.size;
  const [gh, gw] = data.grid;
  const steps = el("div", { class: "steps" });
  for (const step of data.steps) {
    const stack = el("div", { class: "stack", title: "hover to see the photo" },
      el("img", { src: `/image/${result.row}`, alt: result.id, width: w, height: h }),
      el("img", { class: "map", src: step.overlay, alt: `saliency map, step ${step.step}`, width: w, height: h }));
    stack.style.width = `${w}px`;
    stack.style.height = `${h}px`;
    if (step.peak) { // the white box of smcli explain: the step's most salient region
      const box = el("div", { class: "peak", "aria-hidden": "true" });
      Object.assign(box.style, { left: `${(100 * step.peak.col) / gw}%`, top: `${(100 * step.peak.row) / gh}%`,
                                 width: `${100 / gw}%`, height: `${100 / gh}%` });
      stack.append(box);
    }
    const words = el("div", { class: "words" });
    for (const word of step.words) {
      const chip = el("span", {}, word.word);
      chip.style.backgroundColor = word.background;
      words.append(el("span", { class: word.unknown ? "w unk" : "w", title: `${word.word}: weight ${word.weight.toFixed(4)}` },
                      chip, el("small", { text: word.percent })));
    }
    const figure = el("figure", { class: "step" },
      el("figcaption", {}, el("b", { text: `step ${step.step}` }), el("span", { text: step.note })), stack, words);
    figure.style.width = `${w}px`;
    steps.append(figure);
  }
  const legend = el("p", { class: "legend" }, "region saliency low",
    el("img", { src: data.legend.colour_bar, alt: "colour scale" }),
    `peak of the step; hover a picture to see the photo. Word weight: ${data.legend.words}.`);
  return el("div", {}, head, steps, legend);
}

async function loadCaptions(result) {
  $("captions").hidden = true;
  if (!info || !info.captions) return;
  try {
    const data = await api(`/api/captions?${new URLSearchParams({ image: result.id, k: 5 })}`);
    if (opened !== result) return;
    $("caption-list").replaceChildren(...data.results.map((c) => {
      const pick = el("button", { type: "button" }, el("span", { class: "score", text: c.score.toFixed(4) }), c.caption);
      pick.addEventListener("click", () => { $("caption").value = c.caption; explain(c.caption); });
      return el("li", {}, pick);
    }));
    $("captions").hidden = false;
  } catch (_) { /* the explanation still stands */ }
}

// -- wiring ------------------------------------------------------------------------------

async function start() {
  try {
    info = await api("/api/info");
    const caps = info.captions ? `, ${info.captions.toLocaleString()} captions` : "";
    say($("info"), `${info.images.toLocaleString()} images${caps} \u00b7 model ${info.model} (${info.variant}, ${info.text_encoder})`);
  } catch (err) {
    say($("info"), err.message, true);
  }
  $("search").addEventListener("submit", (event) => {
    event.preventDefault();
    const q = $("q").value.trim();
    if (q) search(q, $("k").value);
  });
  $("explain-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const caption = $("caption").value.trim();
    if (caption && opened) explain(caption);
  });
  $("close").addEventListener("click", () => $("explain").close());
  $("explain").addEventListener("close", () => { if (opener) opener.focus(); });
  $("results").addEventListener("keydown", moveFocus);
  document.addEventListener("keydown", (event) => {
    const typing = ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName);
    if (event.key === "/" && !typing && !$("explain").open) {
      event.preventDefault();
      $("q").focus();
    }
  });
  if (info && !info.explain) $("explain-form").hidden = true;
  const q = new URLSearchParams(location.search).get("q");
  if (q) {
    $("q").value = q;
    search(q, $("k").value);
  }
}

start();
