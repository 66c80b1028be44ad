// One-line embedding of the customer chat widget in a shop's page:
//   <script src="https://chat.example.com:7801/web/embed.js" data-token="<customer token>" data-group="pre-sales"></script>
// Adds a chat button in the corner that opens the widget in an iframe, with
// a badge counting the messages that arrived while it was closed, and a close
// button while it is open. The page's address goes to the agent with the
// request. Without data-token the widget shows its own sign-in (dev servers only).
(() => {
  const me = document.currentScript;
  if (!me) return;
  const origin = new URL(me.src).origin;
  const params = new URLSearchParams();
  if (me.dataset.token) params.set('token', me.dataset.token);
  if (me.dataset.group) params.set('group', me.dataset.group);
  params.set('page', location.href.slice(0, 1024));
  const frame = document.createElement('iframe');
  frame.src = `${origin}/chat${params.size ? `#${params}` : ''}`;
  frame.title = me.dataset.title || 'Chat with us';
  frame.allow = 'clipboard-write';
  frame.style.cssText = 'position:fixed;right:16px;bottom:76px;width:min(380px,calc(100vw - 32px));height:min(560px,calc(100vh - 100px));border:1px solid #ccd;border-radius:12px;box-shadow:0 8px 30px rgba(0,0,0,.18);background:#fff;z-index:2147483646;display:none';
  const button = document.createElement('button');
  button.type = 'button';
  button.textContent = me.dataset.label || 'Chat with us';
  button.setAttribute('aria-expanded', 'false');
  button.style.cssText = 'position:fixed;right:16px;bottom:16px;padding:12px 18px;border:0;border-radius:24px;background:#c8102e;color:#fff;font:600 15px system-ui,sans-serif;cursor:pointer;z-index:2147483647';
  const badge = document.createElement('span');
  badge.style.cssText = 'display:none;margin-left:8px;min-width:20px;padding:0 6px;border-radius:10px;background:#fff;color:#c8102e;font-size:12px;line-height:20px;text-align:center';
  button.append(badge);
  const close = document.createElement('button');
  close.type = 'button';
  close.textContent = '×';
  close.setAttribute('aria-label', me.dataset.closeLabel || 'Close the chat');
  close.style.cssText = 'position:fixed;right:24px;bottom:calc(min(560px,calc(100vh - 100px)) + 48px);width:32px;height:32px;border:0;border-radius:16px;background:#fff;color:#333;font:20px/32px system-ui,sans-serif;box-shadow:0 2px 8px rgba(0,0,0,.2);cursor:pointer;z-index:2147483647;display:none';
  const toggle = (open) => {
    frame.style.display = open ? 'block' : 'none';
    close.style.display = open ? 'block' : 'none';
    button.setAttribute('aria-expanded', String(open));
    // The widget counts unread messages only while it is closed.
    if (frame.contentWindow) frame.contentWindow.postMessage({ type: 'dd-open', open }, origin);
    if (open) frame.focus();
    else button.focus();
  };
  button.addEventListener('click', () => toggle(frame.style.display === 'none'));
  close.addEventListener('click', () => toggle(false));
  window.addEventListener('message', (ev) => {
    if (ev.source !== frame.contentWindow || ev.origin !== origin || !ev.data) return;
    // The widget asks, once loaded, whether it is open.
    if (ev.data.type === 'dd-hello') ev.source.postMessage({ type: 'dd-open', open: frame.style.display !== 'none' }, origin);
    if (ev.data.type !== 'dd-unread') return;
    const n = Number(ev.data.count) || 0;
    badge.textContent = n > 99 ? '99+' : n ? String(n) : '';
    badge.style.display = n ? 'inline-block' : 'none';
    badge.setAttribute('aria-label', `${n} unread`);
  });
  const add = () => document.body.append(frame, close, button);
  if (document.body) add();
  else document.addEventListener('DOMContentLoaded', add);
})();
