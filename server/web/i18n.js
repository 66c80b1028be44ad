// i18n.js: the consoles' languages, English and Simplified Chinese. Each page
// keeps its strings in one table per language and looks them up with the
// function `translator` returns; the language comes from the reader's choice
// (kept in this browser) or else the browser's languages, and sets <html lang>.

import { storage } from './dd.js';

const KEY = 'dd.lang';
/** The languages offered, by tag, with their own names. */
export const LANGS = { en: 'English', 'zh-CN': '简体中文' };
const saved = storage('local');

function chosen() {
  const pick = saved.getItem(KEY);
  if (pick && LANGS[pick]) return pick;
  for (const l of navigator.languages || [navigator.language || 'en']) {
    if (/^zh\b/i.test(l)) return 'zh-CN';
    if (/^en\b/i.test(l)) return 'en';
  }
  return 'en';
}

/** The language of this page view. */
export const lang = chosen();
document.documentElement.lang = lang;

/**
 * A lookup in `table` ({ en: {...}, 'zh-CN': {...} }): t(key, { name: … })
 * fills `{name}`; a key missing in the current language falls back to
 * English, a key missing everywhere shows itself (so a gap is visible).
 */
export function translator(table) {
  return (key, vars = {}) => {
    const s = (table[lang] && table[lang][key]) ?? table.en[key] ?? key;
    return s.replace(/\{(\w+)\}/g, (m, k) => (k in vars ? String(vars[k]) : m));
  };
}

/** A language picker; choosing reloads the page in that language. */
export function languagePicker() {
  const sel = document.createElement('select');
  sel.id = 'lang';
  sel.setAttribute('aria-label', 'Language / 语言');
  for (const [tag, name] of Object.entries(LANGS)) {
    const o = document.createElement('option');
    o.value = tag;
    o.lang = tag;
    o.textContent = name;
    o.selected = tag === lang;
    sel.append(o);
  }
  sel.addEventListener('change', () => {
    saved.setItem(KEY, sel.value);
    location.reload();
  });
  return sel;
}
