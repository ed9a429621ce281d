// Shared by the demo apps: a connected client with a status badge, element building, and the
// one way chat text is rendered. Nothing a server or a user sent is ever parsed as markup by
// the page itself: text goes in with textContent.
import { Herald } from "/herald.js";

export const $ = (id) => document.getElementById(id);

/** An element with a class and text (as text, never as HTML). */
export function h(tag, className = "", text = undefined) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export const time = (t) => new Date(t).toLocaleTimeString();

/** Adds `node` at the top of `list`, keeping at most `max` entries. */
export function prepend(list, node, max) {
  list.prepend(node);
  while (list.childElementCount > max) list.lastElementChild.remove();
}

/** An anonymous client of this server; `#status` in the header follows its connection. */
export function connect() {
  const herald = new Herald();
  herald.on("state", ({ state }) => {
    const badge = $("status");
    badge.textContent = state;
    badge.className = `status ${state}`;
  });
  return herald;
}

/** Shown until a demo stream's first message, which only `herald serve --demo` publishes. */
export function awaitingDemo(container) {
  container.replaceChildren(h("p", "muted", "Waiting for data: is the server running with `herald serve --demo`?"));
}

const RICH = new Set(["B", "I", "EM", "STRONG"]);

/**
 * Chat text as Herald stores it: sanitised HTML in which only b, i, em and strong survive and
 * everything else is escaped (docs/protocol.md). It is parsed in an inert document (no
 * scripts run, nothing loads) and rebuilt from text nodes and those four tags, without
 * attributes, so even text that bypassed the server's sanitiser cannot inject anything.
 */
export function richText(html) {
  const parsed = new DOMParser().parseFromString(`<body>${html}`, "text/html");
  const copy = (from, to) => {
    for (const node of from.childNodes) {
      if (node.nodeType === Node.TEXT_NODE) {
        to.append(node.textContent);
      } else if (node.nodeType === Node.ELEMENT_NODE) {
        if (RICH.has(node.tagName)) copy(node, to.appendChild(document.createElement(node.tagName)));
        else to.append(node.textContent);
      }
    }
    return to;
  };
  return copy(parsed.body, document.createDocumentFragment());
}

/** The one edit that turns `before` into `after` (common prefix and suffix kept), for an editor
 * that learns of its text area's changes after the fact. */
export function diff(before, after) {
  let start = 0;
  while (start < before.length && start < after.length && before[start] === after[start]) start++;
  let end = 0;
  while (end < before.length - start && end < after.length - start
    && before[before.length - 1 - end] === after[after.length - 1 - end]) end++;
  return { position: start, length: before.length - start - end, text: after.slice(start, after.length - end) };
}

/** Fills `into` with `text` and a labelled marker at each cursor (`[[position, label]]`). */
export function showCursors(into, text, cursors) {
  const marks = cursors
    .filter(([position]) => typeof position === "number")
    .map(([position, label]) => [Math.min(position, text.length), label])
    .sort((a, b) => a[0] - b[0]);
  const nodes = [];
  let at = 0;
  for (const [position, label] of marks) {
    nodes.push(text.slice(at, position), h("span", "cursor", label));
    at = position;
  }
  nodes.push(text.slice(at));
  into.replaceChildren(...nodes);
}
