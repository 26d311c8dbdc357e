// DOM helpers. Server data only ever goes in via text nodes, never innerHTML.

/** Builds an element; string children become text nodes. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue;
    if (name === 'class') node.className = value;
    else node.setAttribute(name, String(value));
  }
  node.append(...children.filter((c) => c != null && c !== ''));
  return node;
}

/** The elements with these ids inside `root`, found once, keyed by camelCase id
 * (`max-tokens` → `maxTokens`). A missing one is a page/script mismatch: it throws. */
export function elements(root, ...ids) {
  const found = {};
  for (const id of ids) {
    const node = root.id === id ? root : root.querySelector(`#${CSS.escape(id)}`);
    if (!node) throw new Error(`the page has no #${id} inside #${root.id}`);
    found[id.replace(/-(\w)/g, (_, c) => c.toUpperCase())] = node;
  }
  return found;
}

/** Shows `text` in `node`, or hides and empties it when there is no text. */
export function setMessage(node, text) {
  node.textContent = text || '';
  node.hidden = !text;
}

/** Disables `from` and enables `to`, moving keyboard focus along if `from` had it. */
export function handOver(from, to) {
  const hadFocus = document.activeElement === from;
  to.disabled = false;
  from.disabled = true;
  if (hadFocus) to.focus();
}

/** Replaces `select`'s options with the default and `names`, keeping the choice. */
export function fillCollections(select, names) {
  const current = select.value;
  select.replaceChildren(el('option', { value: '' }, 'default collection'),
    ...names.map((name) => el('option', { value: name }, name)));
  if (names.includes(current)) select.value = current;
}

/** Calls `action` on Ctrl+Enter (⌘+Enter on a Mac) in `field`. */
export function onCtrlEnter(field, action) {
  field.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); action(); }
  });
}

/** Calls `action` on Enter in `field`; Shift+Enter keeps making a new line. Not while an
 * input method is composing: its Enter picks the characters (keyCode 229 is the
 * composition's last key in Safari, which reports isComposing false for it). */
export function onEnterSend(field, action) {
  field.addEventListener('keydown', (e) => {
    if (e.key !== 'Enter' || e.shiftKey || e.altKey || e.isComposing || e.keyCode === 229) return;
    e.preventDefault();
    action();
  });
}
