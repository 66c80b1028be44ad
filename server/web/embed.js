// One-line embedding of the customer chat widget in a shop's page:
//   <script src="https://chat.example.com:7801/web/embed.js" data-token="<customer token>" data-group="pre-sales"></script>
// Adds a chat button in the corner that opens the widget in an iframe.
// Without data-token the widget shows its own sign-in (dev servers only).
(() => {
  const me = document.currentScript;
  if (!me) return;
  const origin = new URL(me.src).origin;
  const params = new URLSearchParams();
  if (me.dataset.token) params.set('token', me.dataset.token);
  if (me.dataset.group) params.set('group', me.dataset.group);
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
  button.addEventListener('click', () => {
    const open = frame.style.display === 'none';
    frame.style.display = open ? 'block' : 'none';
    button.setAttribute('aria-expanded', String(open));
  });
  const add = () => document.body.append(frame, button);
  if (document.body) add();
  else document.addEventListener('DOMContentLoaded', add);
})();
