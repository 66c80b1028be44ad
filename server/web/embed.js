// One-line embedding of the customer chat widget in a shop's page:
//   <script src="https://chat.example.com:7801/web/embed.js" data-token="<customer token>" data-group="pre-sales"></script>
// Adds a chat button in the corner that opens the widget in an iframe (the
// whole screen on a phone), with a badge counting unread messages; the
// widget's header has the close button. The page's address goes to the agent
// with the request. Without data-token the widget shows its own sign-in (dev
// servers only).
(() => {
  const me = document.currentScript;
  if (!me) return;
  const origin = new URL(me.src).origin;
  // The launcher's words: data-label / data-title, else
  // in the page's language (data-lang, <html lang>, the browser's).
  const lang = (me.dataset.lang || document.documentElement.lang || navigator.language || 'en').toLowerCase();
  const words = lang.startsWith('zh')
    ? { label: '在线咨询', unread: '条未读', zh: true }
    : { label: 'Chat with us', unread: 'unread', zh: false };
  const params = new URLSearchParams();
  if (me.dataset.token) params.set('token', me.dataset.token);
  if (me.dataset.group) params.set('group', me.dataset.group);
  params.set('page', location.href.slice(0, 1024));
  const frame = document.createElement('iframe');
  frame.src = `${origin}/chat${params.size ? `#${params}` : ''}`;
  frame.title = me.dataset.title || me.dataset.label || words.label;
  frame.allow = 'clipboard-write';
  const PANEL = 'position:fixed;right:16px;bottom:76px;width:min(380px,calc(100vw - 32px));height:min(560px,calc(100vh - 100px));border:1px solid #ccd;border-radius:12px;box-shadow:0 8px 30px rgba(0,0,0,.18);background:#fff;z-index:2147483647';
  const FULL = 'position:fixed;inset:0;width:100vw;height:100dvh;border:0;border-radius:0;background:#fff;z-index:2147483647';
  const phone = window.matchMedia('(max-width: 600px)');
  let left = false; // the corner: data from the shop's settings (dd-look)
  const place = () => {
    const shown = frame.style.display !== 'none';
    const corner = left ? ';right:auto;left:16px' : '';
    frame.style.cssText = `${phone.matches ? FULL : PANEL + corner};display:${shown ? 'block' : 'none'}`;
  };
  frame.style.display = 'none';
  place();
  phone.addEventListener('change', place);
  const button = document.createElement('button');
  button.type = 'button';
  button.append(document.createTextNode(me.dataset.label || words.label));
  button.setAttribute('aria-expanded', 'false');
  button.style.cssText = 'position:fixed;right:16px;bottom:16px;padding:12px 18px;border:0;border-radius:24px;background:#c8102e;color:#fff;font:600 15px system-ui,sans-serif;cursor:pointer;z-index:2147483647';
  const badge = document.createElement('span');
  badge.style.cssText = 'display:none;margin-left:8px;min-width:20px;padding:0 6px;border-radius:10px;background:#fff;color:#c8102e;font-size:12px;line-height:20px;text-align:center';
  button.append(badge);
  const toggle = (open) => {
    frame.style.display = open ? 'block' : 'none';
    // On a phone the widget fills the screen: the launcher waits behind it.
    button.style.display = open && phone.matches ? 'none' : '';
    button.setAttribute('aria-expanded', String(open));
    // The widget counts unread messages only while it is closed.
    if (frame.contentWindow) frame.contentWindow.postMessage({ type: 'dd-open', open }, origin);
    if (open) frame.focus();
    else button.focus();
  };
  button.addEventListener('click', () => toggle(frame.style.display === 'none'));
  window.addEventListener('message', (ev) => {
    if (ev.source !== frame.contentWindow || ev.origin !== origin || !ev.data) return;
    // The widget asks, once loaded, whether it is open.
    if (ev.data.type === 'dd-hello') ev.source.postMessage({ type: 'dd-open', open: frame.style.display !== 'none' }, origin);
    // Its header's close button.
    if (ev.data.type === 'dd-close') toggle(false);
    // The shop's look, as set in /supervisor: words (unless data-label
    // says), colour and corner.
    if (ev.data.type === 'dd-look') look(ev.data);
    if (ev.data.type !== 'dd-unread') return;
    const n = Number(ev.data.count) || 0;
    badge.textContent = n > 99 ? '99+' : n ? String(n) : '';
    badge.style.display = n ? 'inline-block' : 'none';
    badge.setAttribute('aria-label', `${n} ${words.unread}`);
  });
  function look(d) {
    const label = words.zh ? d.label_zh : d.label_en;
    if (!me.dataset.label && label) {
      button.firstChild.textContent = label;
      if (!me.dataset.title) frame.title = label;
    }
    if (/^#[0-9a-fA-F]{6}$/.test(d.color || '')) {
      button.style.background = d.color;
      badge.style.color = d.color;
    }
    left = d.position === 'left';
    button.style.left = left ? '16px' : '';
    button.style.right = left ? '' : '16px';
    place();
  }
  const add = () => document.body.append(frame, button);
  if (document.body) add();
  else document.addEventListener('DOMContentLoaded', add);
})();
