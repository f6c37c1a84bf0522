'use strict';
// The corecast demo chat: one socket.io-client connection with the default options (HTTP
// long-polling first, then the upgrade to WebSocket), the four client events with acks, and
// the server's events. Plain browser JavaScript, no build step. Text from the network goes into
// the page with textContent, never as HTML.
//
// Group ids are opaque: kept exactly as the server gives them in acks and events, compared
// with ===, and shown as text.
(() => {
  const config = window.CORECAST_DEMO || {}; // written by the gateway: /demo/config.js
  const params = new URLSearchParams(window.location.search);
  const ACK_TIMEOUT_MS = 10000;
  const MAX_ERRORS = 20;
  const $ = (id) => document.getElementById(id);

  // Everything the page knows, on window for the browser test and for a look in the devtools.
  const demo = {
    socket: null,
    me: null, // the token's `sub`, for display only (the gateway verifies the token)
    connects: 0,
    transports: [], // of the current Engine.IO session, in order: 'polling', then 'websocket'
    groups: new Map(), // groupId -> { messages: Map(messageId -> message), unread }
    current: undefined, // the selected group's id
    people: new Map(), // userId -> isOnline
    readRequested: new Set(), // ids of messages this page sent markAsRead for
  };
  window.corecastDemo = demo;

  // --- small helpers ----------------------------------------------------------------------

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === 'onclick') node.onclick = v;
      else node.setAttribute(k, String(v));
    }
    for (const c of children) node.append(c); // strings become text nodes
    return node;
  }

  // The user id in a JWT, read without verifying it: only to label "you" on the page.
  function tokenSubject(token) {
    try {
      const payload = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      return JSON.parse(atob(payload)).sub ?? null;
    } catch {
      return null;
    }
  }

  const sameUser = (a, b) => a != null && b != null && String(a) === String(b);
  const userName = (id) => (sameUser(id, demo.me) ? 'you' : `user ${id}`);

  function setStatus(state, text) {
    const status = $('status');
    status.dataset.state = state;
    status.textContent = text;
  }

  function showTransport(name) {
    $('transport').textContent = name;
    if (demo.transports[demo.transports.length - 1] !== name) demo.transports.push(name);
    $('transports').textContent = `(${demo.transports.join(' → ')})`;
  }

  // `error` is a `{ code, message }` from an `error` event or a negative ack.
  function showError(context, error) {
    const list = $('errors');
    const code = error && error.code ? error.code : 'error';
    const message = error && error.message ? error.message : String(error);
    list.prepend(el('li', {}, `${context}: `, el('span', { class: 'code' }, code), ` ${message}`));
    while (list.children.length > MAX_ERRORS) list.lastChild.remove();
  }

  // Emits with an ack and a bounded wait; a timeout is reported like a negative ack.
  async function call(event, payload) {
    try {
      return await demo.socket.timeout(ACK_TIMEOUT_MS).emitWithAck(event, payload);
    } catch {
      return { ok: false, error: { code: 'timeout', message: `no answer to ${event} within 10 s` } };
    }
  }

  // --- groups the page knows of (kept per user in localStorage) --------------------------

  const storageKey = () => `corecast-demo:groups:${demo.me}`;

  function saveGroups() {
    try {
      localStorage.setItem(storageKey(), JSON.stringify([...demo.groups.keys()]));
    } catch { /* storage off: the list lasts as long as the page */ }
  }

  function restoreGroups() {
    try {
      for (const id of JSON.parse(localStorage.getItem(storageKey()) || '[]')) ensureGroup(id);
    } catch { /* nothing stored */ }
  }

  function ensureGroup(id) {
    let group = demo.groups.get(id);
    if (!group) {
      group = { messages: new Map(), unread: 0 };
      demo.groups.set(id, group);
      saveGroups();
      renderGroups();
    }
    return group;
  }

  function select(id) {
    demo.current = id;
    ensureGroup(id).unread = 0;
    $('room-title').textContent = `Group ${id}`;
    for (const node of $('send').elements) node.disabled = false;
    renderGroups();
    renderMessages();
  }

  // --- rendering --------------------------------------------------------------------------

  function renderGroups() {
    const list = $('groups');
    list.replaceChildren();
    for (const [id, group] of demo.groups) {
      const button = el('button', { type: 'button', 'aria-current': id === demo.current,
        onclick: () => select(id) }, String(id));
      if (group.unread > 0) button.append(' ', el('span', { class: 'unread' }, `(${group.unread})`));
      list.append(el('li', {}, button));
    }
  }

  function readByLine(message) {
    const readers = [...message.readBy].filter((u) => !sameUser(u, message.senderId));
    return readers.length ? `read by ${readers.map(userName).join(', ')}` : 'not read by others yet';
  }

  function renderMessages() {
    const list = $('messages');
    list.replaceChildren();
    const group = demo.groups.get(demo.current);
    if (!group) return;
    for (const m of group.messages.values()) {
      const when = new Date(m.timestamp).toLocaleTimeString();
      list.append(el('li', { 'data-id': m.id, 'data-mine': sameUser(m.senderId, demo.me) },
        el('span', { class: 'who' }, userName(m.senderId)),
        el('time', { class: 'when', datetime: m.timestamp }, when),
        el('div', { class: 'text' }, m.text),
        el('div', { class: 'read-by' }, readByLine(m))));
    }
    list.scrollTop = list.scrollHeight;
    markShownAsRead(group);
  }

  // Every message shown in the open group counts as read by this user.
  function markShownAsRead(group) {
    for (const m of group.messages.values()) {
      if (sameUser(m.senderId, demo.me) || demo.readRequested.has(m.id)) continue;
      if ([...m.readBy].some((u) => sameUser(u, demo.me))) continue;
      demo.readRequested.add(m.id);
      call('markAsRead', { messageId: m.id, groupId: m.groupId }).then((ack) => {
        if (!ack.ok) showError('markAsRead', ack.error);
      });
    }
  }

  function renderPeople() {
    const list = $('people');
    list.replaceChildren();
    for (const [id, online] of [...demo.people].sort((a, b) => a[0] - b[0])) {
      list.append(el('li', { 'data-user': id, 'data-online': online },
        `${userName(id)}: ${online ? 'online' : 'offline'}`));
    }
  }

  // --- server events ----------------------------------------------------------------------

  function onNewMessage(m) {
    const group = ensureGroup(m.groupId);
    const known = group.messages.get(m.id); // a replay after a reconnect
    const readBy = new Set([...(known ? known.readBy : []), ...(m.readBy || [])]);
    group.messages.set(m.id, { ...m, readBy });
    if (demo.current === undefined) {
      select(m.groupId);
    } else if (m.groupId === demo.current) {
      renderMessages();
    } else if (!known) {
      group.unread += 1;
      renderGroups();
    }
  }

  function onMessageRead({ messageId, userId, groupId }) {
    const message = demo.groups.get(groupId)?.messages.get(messageId);
    if (!message) return; // sent before this page was open
    message.readBy.add(userId);
    if (groupId === demo.current) renderMessages();
  }

  function onUserOnline({ userId, isOnline }) {
    demo.people.set(userId, isOnline);
    renderPeople();
  }

  // --- connecting -------------------------------------------------------------------------

  function showLogin(visible) {
    $('login').hidden = !visible;
    $('chat').hidden = visible;
  }

  function connect(url, token) {
    if (demo.socket) demo.socket.disconnect();
    demo.me = tokenSubject(token);
    demo.groups.clear();
    demo.people.clear();
    demo.current = undefined;
    restoreGroups();
    renderGroups();
    renderPeople();

    // The default options: polling first, then the upgrade (a path only when the gateway's
    // is not the default one).
    const options = { auth: { token } };
    if (config.path && config.path !== '/socket.io/') options.path = config.path;
    const socket = io(url, options);
    demo.socket = socket;
    setStatus('connecting', `Connecting to ${url} …`);

    socket.io.on('open', () => { // a new Engine.IO session (also on each reconnect)
      const engine = socket.io.engine;
      demo.transports = [];
      showTransport(engine.transport.name);
      engine.on('upgrade', (transport) => showTransport(transport.name));
    });
    socket.on('connect', () => {
      demo.connects += 1;
      setStatus('connected', `Connected as ${demo.me == null ? 'an unknown user' : `user ${demo.me}`}.`);
      showLogin(false);
    });
    socket.on('connect_error', (err) => {
      // socket.active: the client retries by itself (the gateway could not be reached);
      // otherwise the gateway refused the CONNECT (a bad or expired token): log in again.
      setStatus('error', `Connect error: ${err.message}${socket.active ? ' (retrying)' : ''}`);
      if (!socket.active) showLogin(true);
    });
    socket.on('disconnect', (reason) => {
      setStatus('disconnected', `Disconnected: ${reason}${socket.active ? ' (reconnecting)' : ''}`);
      $('transport').textContent = 'none';
    });
    socket.on('newMessage', onNewMessage);
    socket.on('messageRead', onMessageRead);
    socket.on('userOnline', onUserOnline);
    socket.on('error', (error) => showError('error event', error));
  }

  // --- forms ------------------------------------------------------------------------------

  $('url').value = params.get('url') || config.publicUrl ||
    `${window.location.protocol}//${window.location.hostname}:${config.publicPort || 3000}`;

  $('login').addEventListener('submit', (e) => {
    e.preventDefault();
    connect($('url').value.trim(), $('token').value.trim());
  });

  $('logout').addEventListener('click', () => {
    demo.socket.disconnect();
    demo.socket = null;
    setStatus('idle', 'Not connected.');
    showLogin(true);
  });

  $('join').addEventListener('submit', async (e) => {
    e.preventDefault();
    const typed = $('join-id').value; // an id is any string: not trimmed, not parsed
    const ack = await call('joinGroup', { groupId: typed });
    if (!ack.ok) {
      showError(`joinGroup ${typed}`, ack.error);
      return;
    }
    $('join-id').value = '';
    select('groupId' in ack ? ack.groupId : typed);
  });

  $('send').addEventListener('submit', async (e) => {
    e.preventDefault();
    const input = $('text');
    const ack = await call('sendMessage', { groupId: demo.current, text: input.value, attachments: [] });
    if (ack.ok) input.value = ''; // the message itself arrives as newMessage
    else showError('sendMessage', ack.error);
  });
})();
