// The asn-ledger explorer: vanilla JavaScript, no dependencies, no build step.
// It reads the node's public API (and, with an owner key typed by the user, the full history)
// and verifies entries with WebCrypto (SHA-256, Ed25519) following docs/VERIFYING.md.
// The owner key lives in the variable `ownerKey` only: never in storage, cookies or the URL.
"use strict";

(function () {
  const EVENT_DOMAIN = "asn-ledger/event/v1\u0000";
  const SIGNATURE_DOMAIN = "asn-ledger/event-signature/v1\u0000";
  const GROUP_SIGNATURE_DOMAIN = "asn-ledger/answer-group-signature/v1\u0000";
  const SEVERITIES = ["info", "warning", "error", "critical"];
  const utf8 = new TextEncoder();

  let ownerKey = ""; // page memory only
  const state = { asn: "", page: 1, perPage: 20, type: "", from: "", to: "", total: 0, events: [] };
  let openEvent = null; // the event as listed (what the user sees and verifies)
  let openProof = null; // the proof endpoint's answer for it

  const $ = (id) => document.getElementById(id);

  // ---- HTTP ----

  async function getJson(path, withKey) {
    const headers = { Accept: "application/json" };
    if (withKey && ownerKey) headers.Authorization = "Bearer " + ownerKey;
    const response = await fetch(path, { headers, cache: "no-store", credentials: "omit" });
    let body = null;
    try { body = await response.json(); } catch (_) { /* not JSON */ }
    if (!response.ok) {
      const message = body && body.error ? body.error.code + ": " + body.error.message
        : "HTTP " + response.status;
      throw new Error(message);
    }
    return body;
  }

  function setStatus(text, isError) {
    const status = $("status");
    status.textContent = text;
    status.className = isError ? "error" : "";
  }

  function text(id, value) { $(id).textContent = value == null ? "" : String(value); }

  // ---- Search and agent ----

  async function search(event) {
    event.preventDefault();
    const asn = $("asn").value.trim().toUpperCase();
    ownerKey = $("key").value.trim();
    if (!/^ASN-\d{4}-\d{4}-\d{4}-[A-Z]$/.test(asn)) {
      setStatus("ASN: must look like ASN-2026-0004-8271-L", true);
      $("asn").setAttribute("aria-invalid", "true");
      $("asn").focus();
      return;
    }
    $("asn").removeAttribute("aria-invalid");
    state.asn = asn;
    state.page = 1;
    setStatus("Loading " + asn + "…");
    try {
      const [agent, trust] = await Promise.all([
        getJson("/api/v1/agents/" + encodeURIComponent(asn), true),
        getJson("/api/v1/agents/" + encodeURIComponent(asn) + "/trust-score", true),
      ]);
      showAgent(agent, trust);
      await loadActivity();
      setStatus("");
      $("agent-title").focus();
    } catch (error) {
      $("agent").hidden = true;
      $("activity").hidden = true;
      $("entry").hidden = true;
      setStatus(asn + ": " + error.message, true);
    }
  }

  function showAgent(agent, trust) {
    text("agent-asn", agent.asn);
    text("agent-name", agent.name);
    text("agent-status", agent.status + (agent.deactivated_at ? " since " + agent.deactivated_at : ""));
    text("agent-created", agent.created_at);
    text("trust-score", trust.trust_score);
    const p = trust.position;
    text("trust-position", "ledger size " + p.seq + " (" + p.time + "), head " + p.head_hash.slice(0, 16) + "…");
    const i = trust.inputs;
    text("trust-inputs", i.events_in_window + " events in the " + i.window_days + "-day window (" +
      i.window_start + " to " + i.window_end + "), " + i.agent_events_total + " in all; good " +
      i.good + ", bad " + i.bad + " (formula " + trust.formula + ")");
    $("agent").hidden = false;
  }

  // ---- Activity ----

  async function loadActivity() {
    const params = new URLSearchParams();
    if (state.type) params.set("type", state.type);
    if (state.from) params.set("from", state.from);
    if (state.to) params.set("to", state.to);
    params.set("page", String(state.page));
    params.set("per_page", String(state.perPage));
    const body = await getJson("/api/v1/agents/" + encodeURIComponent(state.asn) + "/activity?" +
      params.toString(), true);
    state.events = body.data;
    state.total = body.pagination.total;
    const pages = Math.max(1, body.pagination.total_pages);
    const rows = $("events-body");
    rows.textContent = "";
    for (const e of body.data) {
      const row = document.createElement("tr");
      row.dataset.seq = String(e.seq);
      for (const [value, cls] of [[e.seq, ""], [e.created_at, ""], [e.event_type, ""],
        [e.severity, "sev-" + e.severity]]) {
        const cell = document.createElement("td");
        cell.textContent = String(value);
        if (cls) cell.className = cls;
        row.appendChild(cell);
      }
      const cell = document.createElement("td");
      const open = document.createElement("button");
      open.type = "button";
      open.className = "link open-entry";
      open.textContent = "Open";
      open.setAttribute("aria-label", "Open entry " + e.seq);
      open.addEventListener("click", () => showEntry(e));
      cell.appendChild(open);
      row.appendChild(cell);
      rows.appendChild(row);
    }
    text("page-info", "Page " + state.page + " of " + pages + " (" + state.total + " events)");
    $("prev-page").disabled = state.page <= 1;
    $("next-page").disabled = state.page >= pages;
    text("activity-scope", ownerKey ? "With your key: the full history you may read."
      : "Public view: the 50 most recent matching events. Type the owner's key for the full history.");
    $("activity").hidden = false;
  }

  async function changePage(delta) {
    state.page += delta;
    try { await loadActivity(); setStatus(""); } catch (error) {
      state.page -= delta;
      setStatus("Activity: " + error.message, true);
    }
  }

  async function applyFilters(event) {
    event.preventDefault();
    state.type = $("f-type").value.trim();
    state.from = $("f-from").value.trim();
    state.to = $("f-to").value.trim();
    state.perPage = Number($("f-per-page").value);
    state.page = 1;
    try { await loadActivity(); setStatus(""); } catch (error) { setStatus("Filters: " + error.message, true); }
  }

  // ---- One entry ----

  function fact(list, name, value) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = String(value);
    list.appendChild(dt);
    list.appendChild(dd);
  }

  async function showEntry(e) {
    openEvent = e;
    openProof = null;
    $("verify-result").textContent = "";
    $("verify-result").className = "";
    $("verify-steps").textContent = "";
    const facts = $("entry-facts");
    facts.textContent = "";
    for (const name of ["seq", "id", "agent_id", "asn", "event_type", "severity", "reported_by",
      "created_at", "hash", "prev_hash", "agent_prev_hash", "signature", "signer", "key_id"]) {
      fact(facts, name, e[name]);
    }
    if (e.signature_proof) {
      const g = e.signature_proof;
      fact(facts, "signature_proof", "place " + g.leaf_index + " of " + g.tree_size +
        " in its answer group, " + g.hashes.length + " hashes");
    }
    text("entry-metadata", JSON.stringify(e.metadata, null, 2));
    text("entry-title", "Entry " + e.seq);
    $("entry").hidden = false;
    $("entry-title").focus();
    const proofList = $("entry-proof");
    proofList.textContent = "";
    text("entry-checkpoint", "");
    try {
      openProof = await getJson("/api/v1/ledger/entries/" + e.seq + "/proof", false);
      fact(proofList, "leaf_index", openProof.proof.leaf_index);
      fact(proofList, "tree_size", openProof.proof.tree_size);
      openProof.proof.hashes.forEach((h, n) => fact(proofList, "hash " + n, h));
      text("entry-checkpoint", openProof.checkpoint);
    } catch (error) {
      fact(proofList, "error", error.message);
    }
  }

  // ---- Verification (docs/VERIFYING.md) ----

  class Failure extends Error {}
  function fail(reason) { throw new Failure(reason); }

  function hexToBytes(hex, length, what) {
    if (typeof hex !== "string" || hex.length !== length * 2 || !/^[0-9a-f]*$/.test(hex)) {
      fail(what + " is not " + length * 2 + " lowercase hex characters");
    }
    const out = new Uint8Array(length);
    for (let i = 0; i < length; i++) out[i] = parseInt(hex.substr(i * 2, 2), 16);
    return out;
  }

  function toHex(bytes) {
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function uuidBytes(text, what) {
    if (typeof text !== "string" || !/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(text)) {
      fail(what + " is not a UUID");
    }
    return hexToBytes(text.replace(/-/g, ""), 16, what);
  }

  function concat(parts) {
    const length = parts.reduce((n, p) => n + p.length, 0);
    const out = new Uint8Array(length);
    let at = 0;
    for (const p of parts) { out.set(p, at); at += p.length; }
    return out;
  }

  function equalBytes(a, b) {
    if (a.length !== b.length) return false;
    let diff = 0;
    for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
    return diff === 0;
  }

  async function sha256(bytes) {
    return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  }

  // RFC 8785 (JCS): ECMAScript's own JSON.stringify writes strings and numbers exactly as JCS
  // requires; members sort by UTF-16 code units, which is JavaScript's default string order.
  function canonical(value) {
    if (value === null || typeof value === "boolean" || typeof value === "string") {
      return JSON.stringify(value);
    }
    if (typeof value === "number") {
      if (!Number.isFinite(value)) fail("metadata holds a number JSON cannot carry");
      return JSON.stringify(value);
    }
    if (Array.isArray(value)) return "[" + value.map(canonical).join(",") + "]";
    if (typeof value === "object") {
      return "{" + Object.keys(value).sort().map((k) => JSON.stringify(k) + ":" + canonical(value[k])).join(",") + "}";
    }
    fail("metadata holds a value JSON cannot carry");
  }

  function u32(n) { const b = new Uint8Array(4); new DataView(b.buffer).setUint32(0, n); return b; }
  function u64(n) { const b = new Uint8Array(8); new DataView(b.buffer).setBigUint64(0, BigInt(n)); return b; }
  function i64(n) { const b = new Uint8Array(8); new DataView(b.buffer).setBigInt64(0, BigInt(n)); return b; }
  function str(s) { const bytes = utf8.encode(s); return concat([u32(bytes.length), bytes]); }

  function createdAtMs(text) {
    if (typeof text !== "string" || !/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/.test(text)) {
      fail("created_at is not an RFC 3339 time with milliseconds in UTC");
    }
    const ms = Date.parse(text);
    if (!Number.isFinite(ms)) fail("created_at is not a valid time");
    return ms;
  }

  // The encoding E of section 2.
  function encodeEvent(e) {
    if (!Number.isSafeInteger(e.seq) || e.seq < 1) fail("seq is not a positive integer");
    const severity = SEVERITIES.indexOf(e.severity);
    if (severity < 0) fail("severity " + JSON.stringify(e.severity) + " is unknown");
    if (e.metadata === null || typeof e.metadata !== "object" || Array.isArray(e.metadata)) {
      fail("metadata is not a JSON object");
    }
    return concat([
      utf8.encode(EVENT_DOMAIN), u64(e.seq), uuidBytes(e.id, "id"), uuidBytes(e.agent_id, "agent_id"),
      str(e.asn), str(e.event_type), new Uint8Array([severity]), str(canonical(e.metadata)),
      str(e.reported_by), i64(createdAtMs(e.created_at)),
      hexToBytes(e.prev_hash, 32, "prev_hash"), hexToBytes(e.agent_prev_hash, 32, "agent_prev_hash"),
    ]);
  }

  async function keyId(name, publicKey) {
    const digest = await sha256(concat([utf8.encode(name), new Uint8Array([0x0a, 0x01]), publicKey]));
    return digest.slice(0, 4);
  }

  async function ed25519Verify(publicKey, signature, message) {
    let key;
    try {
      key = await crypto.subtle.importKey("raw", publicKey, { name: "Ed25519" }, false, ["verify"]);
    } catch (error) {
      fail("this browser's WebCrypto has no Ed25519 (" + error.message + ")");
    }
    return crypto.subtle.verify({ name: "Ed25519" }, key, signature, message);
  }

  function base64Bytes(text, what) {
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4 !== 0) fail(what + " is not base64");
    let binary;
    try { binary = atob(text); } catch (_) { fail(what + " is not base64"); }
    return Uint8Array.from(binary, (c) => c.charCodeAt(0));
  }

  // A C2SP signed note holding a checkpoint (section 6); returns its fields once a trusted key's
  // signature verifies.
  async function verifyCheckpoint(note, trusted) {
    if (typeof note !== "string" || !note.endsWith("\n")) fail("the checkpoint note does not end with a newline");
    const split = note.lastIndexOf("\n\n");
    if (split < 0) fail("the checkpoint note has no signature block");
    const textPart = note.slice(0, split + 1);
    const lines = textPart.split("\n");
    if (lines.length !== 6 || lines[5] !== "") fail("the checkpoint text is not five lines");
    const [origin, sizeText, rootText, headLine, timeLine] = lines;
    if (!/^(0|[1-9]\d*)$/.test(sizeText)) fail("the checkpoint size is not a canonical number");
    const root = base64Bytes(rootText, "the checkpoint root");
    if (root.length !== 32) fail("the checkpoint root is not 32 bytes");
    if (!/^head [0-9a-f]{64}$/.test(headLine)) fail("the checkpoint head line is malformed");
    if (!/^time (0|-?[1-9]\d*)$/.test(timeLine)) fail("the checkpoint time line is malformed");
    const signatures = note.slice(split + 2).split("\n");
    if (signatures.pop() !== "") fail("the checkpoint note does not end with a signature line");
    const textBytes = utf8.encode(textPart);
    let verified = null;
    const seen = new Set();
    for (const line of signatures) {
      const m = /^\u2014 ([^ +]+) ([A-Za-z0-9+/=]+)$/.exec(line);
      if (!m) fail("a checkpoint signature line is malformed");
      const blob = base64Bytes(m[2], "a checkpoint signature");
      if (blob.length < 5) fail("a checkpoint signature is too short");
      const id = toHex(blob.slice(0, 4));
      if (seen.has(m[1] + " " + id)) fail("a checkpoint signature line is repeated");
      seen.add(m[1] + " " + id);
      const key = trusted.find((k) => k.name === m[1] && k.keyIdHex === id);
      if (!key) continue; // a cosigner we do not know: ignored (C2SP)
      if (blob.length !== 68) fail("the checkpoint signature of " + m[1] + " is not 64 bytes");
      if (!(await ed25519Verify(key.publicKey, blob.slice(4), textBytes))) {
        fail("the checkpoint signature of " + m[1] + " does not verify");
      }
      verified = m[1];
    }
    if (!verified) fail("no signature of a known node key on the checkpoint");
    return { origin, size: BigInt(sizeText), root, head: headLine.slice(5), time: timeLine.slice(5), signer: verified };
  }

  // RFC 9162 §2.1.3.2: the root that an inclusion proof leads to from a leaf hash.
  async function inclusionRoot(leafIndex, treeSize, leafHash, path) {
    let fn = BigInt(leafIndex);
    let sn = BigInt(treeSize) - 1n;
    if (fn > sn) fail("the proof's leaf_index is not below its tree_size");
    let r = leafHash;
    for (const p of path) {
      if (sn === 0n) fail("the inclusion proof is longer than its tree needs");
      if ((fn & 1n) === 1n || fn === sn) {
        r = await sha256(concat([new Uint8Array([1]), p, r]));
        if ((fn & 1n) === 0n) {
          while ((fn & 1n) === 0n && fn !== 0n) { fn >>= 1n; sn >>= 1n; }
        }
      } else {
        r = await sha256(concat([new Uint8Array([1]), r, p]));
      }
      fn >>= 1n;
      sn >>= 1n;
    }
    if (sn !== 0n) fail("the inclusion proof is shorter than its tree needs");
    return r;
  }

  async function verifyEntry(e, proofAnswer, keys, step) {
    // Keys: the node's published list; each key id must be the one its name and key make.
    const trusted = [];
    for (const k of keys.keys) {
      const publicKey = hexToBytes(k.public_key, 32, "public key of " + k.name);
      const id = toHex(await keyId(k.name, publicKey));
      if (id !== k.key_id) fail("the key id of " + k.name + " does not match its key");
      trusted.push({ name: k.name, keyIdHex: id, publicKey });
    }
    step("keys: " + trusted.length + " node keys from /api/v1/ledger/keys");

    const encoded = encodeEvent(e);
    const hash = await sha256(encoded);
    if (toHex(hash) !== e.hash) {
      fail("the event's hash does not match its fields (recomputed " + toHex(hash).slice(0, 16) +
        "…, served " + String(e.hash).slice(0, 16) + "…)");
    }
    step("event hash: SHA-256 of the " + encoded.length + "-byte encoding v1 is " + e.hash.slice(0, 16) + "…");

    const signer = trusted.find((k) => k.name === e.signer);
    if (!signer) fail("the signer " + e.signer + " is not a key of /api/v1/ledger/keys");
    if (signer.keyIdHex !== e.key_id) fail("the event's key_id does not match its signer's key");
    const signature = hexToBytes(e.signature, 64, "signature");
    if (e.signature_proof) {
      // An answer group's signature (docs/VERIFYING.md section 9): over the root of the group's
      // tree, which the event's proof leads to from SHA-256(0x00 || hash).
      const group = e.signature_proof;
      const groupPath = group.hashes.map((h, n) => hexToBytes(h, 32, "signature_proof hash " + n));
      const groupLeaf = await sha256(concat([new Uint8Array([0]), hash]));
      const groupRoot = await inclusionRoot(group.leaf_index, group.tree_size, groupLeaf, groupPath);
      const message = concat([utf8.encode(GROUP_SIGNATURE_DOMAIN), u64(group.tree_size), groupRoot]);
      if (!(await ed25519Verify(signer.publicKey, signature, message))) {
        fail("the group signature of " + e.signer + " does not verify");
      }
      step("signature: Ed25519 of " + e.signer + " over its answer group of " + group.tree_size +
        " events verifies, the event's place in it proven by " + groupPath.length + " hashes");
    } else {
      const message = concat([utf8.encode(SIGNATURE_DOMAIN), hash]);
      if (!(await ed25519Verify(signer.publicKey, signature, message))) {
        fail("the signature of " + e.signer + " does not verify");
      }
      step("signature: Ed25519 of " + e.signer + " over the hash verifies");
    }

    if (!proofAnswer) fail("no inclusion proof could be fetched");
    if (proofAnswer.event.hash !== e.hash) fail("the proof is for another event (hash " + proofAnswer.event.hash.slice(0, 16) + "…)");
    const checkpoint = await verifyCheckpoint(proofAnswer.checkpoint, trusted);
    step("checkpoint: signed by " + checkpoint.signer + ", size " + checkpoint.size);

    const proof = proofAnswer.proof;
    if (proof.leaf_index !== e.seq - 1) fail("the proof's leaf_index is not seq − 1");
    if (BigInt(proof.tree_size) !== checkpoint.size) fail("the proof's tree_size is not the checkpoint's size");
    const path = proof.hashes.map((h, n) => hexToBytes(h, 32, "proof hash " + n));
    const leaf = await sha256(concat([new Uint8Array([0]), encoded]));
    const root = await inclusionRoot(proof.leaf_index, proof.tree_size, leaf, path);
    if (!equalBytes(root, checkpoint.root)) fail("the inclusion proof does not lead to the checkpoint's root");
    step("inclusion: " + path.length + " proof hashes lead from the leaf to the signed root of size " + checkpoint.size);

    if (BigInt(e.seq) === checkpoint.size) {
      if (checkpoint.head !== e.hash) fail("the checkpoint's head is not this event's hash");
      if (checkpoint.time !== String(createdAtMs(e.created_at))) fail("the checkpoint's time is not this event's created_at");
      step("head: the checkpoint's head and time are this event's");
    }
  }

  async function verifyClicked() {
    const result = $("verify-result");
    const steps = $("verify-steps");
    steps.textContent = "";
    result.className = "";
    result.textContent = "Verifying…";
    $("verify").disabled = true;
    const step = (message, bad) => {
      const li = document.createElement("li");
      li.textContent = message;
      li.className = bad ? "bad" : "ok";
      steps.appendChild(li);
    };
    try {
      if (!window.isSecureContext || !window.crypto || !crypto.subtle) {
        fail("WebCrypto is unavailable: open the explorer over HTTPS or on localhost");
      }
      const keys = await getJson("/api/v1/ledger/keys", false);
      await verifyEntry(openEvent, openProof, keys, step);
      result.textContent = "verified";
      result.className = "verified";
    } catch (error) {
      const reason = error instanceof Failure ? error.message : "error: " + error.message;
      step(reason, true);
      result.textContent = "failed: " + reason;
      result.className = "failed";
    } finally {
      $("verify").disabled = false;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("search").addEventListener("submit", search);
    $("filters").addEventListener("submit", applyFilters);
    $("prev-page").addEventListener("click", () => changePage(-1));
    $("next-page").addEventListener("click", () => changePage(1));
    $("verify").addEventListener("click", verifyClicked);
  });
})();
