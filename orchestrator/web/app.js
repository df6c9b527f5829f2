// The voxwire console: one WebSocket to the orchestrator (a Converse
// session), TTS audio played through an AudioWorklet, the microphone
// captured through another and resampled to the STT rate here, and the
// worker pools shown as they change. Ids and window.voxwire.stats are a
// stable interface (../shared/INTERFACES.md, "Web console").
import { Resampler, int16ToFloat, floatToInt16 } from "/resampler.js";

const STT_RATE = 16000;
const AUDIO_HEADER = 12;
const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 8000;
// Speech while audio plays interrupts it: this many 20 ms blocks in a row
// above VOICE_RMS.
const VOICE_RMS = 0.03;
const VOICE_BLOCKS = 5;

const $ = (id) => document.getElementById(id);

const stats = {
  framesPlayed: 0,
  framesReceived: 0,
  lastFirstAudioMs: null,
  lastInterruptMs: null,
  lastServerInterruptMs: null,
  connected: false,
  sessionId: null,
  reconnects: 0,
  errors: [],
};
window.voxwire = { stats, workers: [] };

let ws = null;
let backoff = BACKOFF_MIN_MS;
let reconfiguring = false;
let audio = null; // {ctx, playback}
let audioStarting = null;
let mic = null;
let tts = null; // {turn, rate, resampler}
let speakingTurn = 0;
let playing = false;
let voiceBlocks = 0;
let stopToken = 0;
const stopWaits = new Map(); // token -> performance.now() of the interrupt
const pendingTurns = []; // {t0, text} of turns asked for, not started yet
const turns = new Map(); // turn id -> {t0, line, firstAudio}
const droppedTurns = new Set(); // interrupted: their frames still in flight are dropped

// ------------------------------------------------------------------ alerts

function setAlert(key, text, level = "error") {
  let el = document.querySelector(`#alerts [data-key="${key}"]`);
  if (!text) {
    if (el) el.remove();
    return;
  }
  if (!el) {
    el = document.createElement("div");
    el.dataset.key = key;
    $("alerts").append(el);
  }
  el.className = level === "warn" ? "alert warn" : "alert";
  el.textContent = text;
}

function turnError(turn, status, message) {
  const text = `turn ${turn} failed: ${status}: ${message}`;
  stats.errors.push(text);
  if (stats.errors.length > 50) stats.errors.shift();
  setAlert(`turn-${turn}`, text);
  const entry = turns.get(turn);
  if (entry && entry.line) entry.line.querySelector(".meta").textContent = status;
}

// ------------------------------------------------------------------ connection

function setConnection(state, text) {
  const badge = $("connection");
  badge.dataset.state = state;
  badge.textContent = text;
}

function send(message) {
  if (ws && ws.readyState === WebSocket.OPEN) {
    const binary = message instanceof ArrayBuffer;
    ws.send(binary || typeof message === "string" ? message : JSON.stringify(message));
    return true;
  }
  return false;
}

function connect() {
  setConnection("connecting", "connecting…");
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  // With --auth-token set, open the page as /?access_token=TOKEN: the
  // socket carries it on (a browser cannot set headers on a WebSocket).
  const token = new URLSearchParams(location.search).get("access_token");
  const query = token ? `?access_token=${encodeURIComponent(token)}` : "";
  const socket = new WebSocket(`${scheme}://${location.host}/ws${query}`);
  socket.binaryType = "arraybuffer";
  ws = socket;
  socket.onopen = () => {
    socket.send(
      JSON.stringify({
        type: "config",
        input_sample_rate: STT_RATE,
        partial_results: true,
        echo: $("echo").checked,
      }),
    );
  };
  socket.onmessage = (e) => {
    if (typeof e.data === "string") onJson(JSON.parse(e.data));
    else onAudio(e.data);
  };
  socket.onclose = () => {
    if (ws !== socket) return;
    ws = null;
    stats.connected = false;
    stats.sessionId = null;
    speakingTurn = 0;
    pendingTurns.length = 0;
    if (reconfiguring) {
      reconfiguring = false;
      connect();
      return;
    }
    const delay = Math.round(backoff * (0.75 + Math.random() * 0.5));
    backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
    stats.reconnects += 1;
    setConnection("closed", "disconnected");
    setAlert("connection", `Connection to the orchestrator lost; reconnecting in ${(delay / 1000).toFixed(1)} s`);
    setTimeout(connect, delay);
  };
}

function onJson(msg) {
  switch (msg.type) {
    case "hello":
      backoff = BACKOFF_MIN_MS;
      stats.connected = true;
      stats.sessionId = msg.session_id;
      setConnection("open", "connected");
      $("session").textContent = `session ${msg.session_id}`;
      setAlert("connection", null);
      setAlert("ended", null);
      break;
    case "workers":
      renderWorkers(msg.workers);
      break;
    case "state":
      onState(msg);
      break;
    case "transcript":
      onTranscript(msg);
      break;
    case "error":
      turnError(msg.turn, msg.status, msg.message);
      break;
    case "interrupted": {
      stats.lastServerInterruptMs = msg.interrupt_to_silence_us / 1000;
      showInterrupt();
      const entry = turns.get(msg.turn);
      if (entry) {
        entry.line.classList.add("interrupted");
        entry.line.querySelector(".meta").textContent += " · interrupted";
      }
      break;
    }
    case "ended":
      if (msg.status !== "OK") {
        stats.errors.push(`${msg.status}: ${msg.message}`);
        setAlert("ended", `The conversation ended: ${msg.status}: ${msg.message}`);
      }
      break;
    default:
      break;
  }
}

// ------------------------------------------------------------------ turns

function addLine(kind, text, final) {
  const li = document.createElement("li");
  li.className = kind;
  li.dataset.final = final ? "true" : "false";
  const meta = document.createElement("span");
  meta.className = "meta";
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  li.append(meta, body);
  $("transcript").append(li);
  li.scrollIntoView({ block: "nearest" });
  return li;
}

function onState(msg) {
  $("session-state").textContent = msg.to;
  if (msg.to === "SPEAKING") {
    speakingTurn = msg.turn;
    const asked = pendingTurns.shift() || { t0: performance.now(), text: "" };
    const line = addLine("voxwire", asked.text, true);
    turns.set(msg.turn, { t0: asked.t0, line, firstAudio: null });
  } else if (msg.from === "SPEAKING" || msg.from === "BARGED_IN") {
    if (speakingTurn === msg.turn) speakingTurn = 0;
  }
}

function onTranscript(msg) {
  const key = `${msg.turn}:${msg.utterance_id}`;
  let li = document.querySelector(`#transcript li[data-utterance="${key}"]`);
  const text = msg.text.trim();
  if (msg.is_final && !text) {
    // No speech in that utterance: nothing to settle.
    if (li) li.remove();
    return;
  }
  if (!li) {
    li = addLine("you", text, msg.is_final);
    li.dataset.utterance = key;
  }
  li.querySelector(".text").textContent = text;
  li.dataset.final = msg.is_final ? "true" : "false";
  if (msg.is_final) {
    li.querySelector(".meta").textContent = `${(msg.start_ms / 1000).toFixed(1)}–${(msg.end_ms / 1000).toFixed(1)} s`;
    if ($("echo").checked) pendingTurns.push({ t0: performance.now(), text });
  }
}

function say(text) {
  text = text.trim();
  if (!text) return;
  ensureAudio();
  if (!stats.connected || !send({ type: "say", text })) {
    setAlert("say", "Not connected: the text was not sent", "warn");
    return;
  }
  setAlert("say", null);
  pendingTurns.push({ t0: performance.now(), text });
}

function interrupt() {
  const t0 = performance.now();
  if (speakingTurn) droppedTurns.add(speakingTurn);
  pendingTurns.length = 0;
  send({ type: "interrupt" });
  if (audio) {
    stopToken += 1;
    stopWaits.set(stopToken, t0);
    audio.playback.port.postMessage({ type: "stop", token: stopToken });
  }
}

function showInterrupt() {
  const parts = [];
  if (stats.lastInterruptMs !== null) parts.push(`${stats.lastInterruptMs.toFixed(1)} ms here`);
  if (stats.lastServerInterruptMs !== null) parts.push(`${stats.lastServerInterruptMs.toFixed(2)} ms in the orchestrator`);
  $("interrupt-ms").textContent = parts.join(", ") || "–";
}

// ------------------------------------------------------------------ audio out

function ensureAudio() {
  if (audio) {
    if (audio.ctx.state === "suspended") audio.ctx.resume();
    return Promise.resolve(audio);
  }
  if (audioStarting) return audioStarting;
  audioStarting = (async () => {
    const ctx = new AudioContext({ latencyHint: "interactive" });
    await ctx.audioWorklet.addModule("/playback-worklet.js");
    await ctx.audioWorklet.addModule("/capture-worklet.js");
    const playback = new AudioWorkletNode(ctx, "voxwire-playback", { outputChannelCount: [1] });
    playback.connect(ctx.destination);
    playback.port.onmessage = (e) => onPlayback(e.data);
    if (ctx.state === "suspended") await ctx.resume();
    audio = { ctx, playback };
    return audio;
  })();
  audioStarting.catch((e) => setAlert("audio", `Audio could not start: ${e}`));
  return audioStarting;
}

function onPlayback(msg) {
  if (msg.type === "played") {
    stats.framesPlayed += msg.frames;
    $("frames-played").textContent = String(stats.framesPlayed);
  } else if (msg.type === "turn-audio") {
    const entry = turns.get(msg.turn);
    if (entry && entry.firstAudio === null) {
      entry.firstAudio = performance.now() - entry.t0;
      stats.lastFirstAudioMs = entry.firstAudio;
      $("first-audio").textContent = `${entry.firstAudio.toFixed(0)} ms (turn ${msg.turn})`;
      entry.line.querySelector(".meta").textContent = `first audio ${entry.firstAudio.toFixed(0)} ms`;
    }
  } else if (msg.type === "playing") {
    playing = msg.playing;
  } else if (msg.type === "stopped") {
    const t0 = stopWaits.get(msg.token);
    stopWaits.delete(msg.token);
    if (t0 !== undefined) {
      stats.lastInterruptMs = performance.now() - t0;
      showInterrupt();
    }
    playing = false;
  }
}

async function onAudio(buffer) {
  const bytes = new Uint8Array(buffer);
  if (bytes.length < AUDIO_HEADER || bytes[0] !== 1) return;
  const view = new DataView(buffer);
  const final = (bytes[1] & 1) !== 0;
  const turn = view.getUint32(4, true);
  const rate = view.getUint32(8, true);
  if (droppedTurns.has(turn)) return;
  stats.framesReceived += 1;
  const { ctx, playback } = audio || (await ensureAudio());
  if (droppedTurns.has(turn)) return;
  const pcm = int16ToFloat(new Uint8Array(buffer, AUDIO_HEADER));
  if (!tts || tts.turn !== turn || tts.rate !== rate) {
    tts = { turn, rate, resampler: new Resampler(rate || ctx.sampleRate, ctx.sampleRate) };
  }
  let samples = tts.resampler.process(pcm);
  if (final) {
    const tail = tts.resampler.flush();
    const all = new Float32Array(samples.length + tail.length);
    all.set(samples);
    all.set(tail, samples.length);
    samples = all;
    tts = null;
  }
  playback.port.postMessage({ type: "push", samples, turn, final, frame: pcm.length > 0 }, [samples.buffer]);
}

// ------------------------------------------------------------------ microphone

async function startMic() {
  const { ctx } = await ensureAudio();
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: false },
    });
  } catch (e) {
    setAlert("mic", `Microphone unavailable: ${e.message || e}`);
    return;
  }
  setAlert("mic", null);
  const source = ctx.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(ctx, "voxwire-capture", { numberOfOutputs: 1 });
  // Keeps the capture node pulled by the graph without making it audible.
  const mute = ctx.createGain();
  mute.gain.value = 0;
  source.connect(node);
  node.connect(mute);
  mute.connect(ctx.destination);
  const resampler = new Resampler(ctx.sampleRate, STT_RATE);
  node.port.onmessage = (e) => onMicBlock(e.data, resampler);
  mic = { stream, source, node, mute, resampler };
  $("mic").setAttribute("aria-pressed", "true");
  $("mic").textContent = "Microphone on";
}

function onMicBlock(block, resampler) {
  let sum = 0;
  for (let i = 0; i < block.length; i++) sum += block[i] * block[i];
  const rms = Math.sqrt(sum / block.length);
  $("level").firstElementChild.style.width = `${Math.min(100, rms * 400)}%`;
  if (playing && rms > VOICE_RMS) {
    voiceBlocks += 1;
    if (voiceBlocks === VOICE_BLOCKS) interrupt();
  } else {
    voiceBlocks = 0;
  }
  const out = resampler.process(block);
  if (out.length && stats.connected) send(floatToInt16(out));
}

function stopMic() {
  if (!mic) return;
  const { stream, source, node, mute, resampler } = mic;
  mic = null;
  stream.getTracks().forEach((t) => t.stop());
  node.port.postMessage({ type: "stop" });
  source.disconnect();
  node.disconnect();
  mute.disconnect();
  const tail = resampler.flush();
  if (tail.length && stats.connected) send(floatToInt16(tail));
  send({ type: "end_audio" });
  $("mic").setAttribute("aria-pressed", "false");
  $("mic").textContent = "Microphone off";
  $("level").firstElementChild.style.width = "0";
}

// ------------------------------------------------------------------ workers

function renderWorkers(list) {
  window.voxwire.workers = list;
  const body = $("workers");
  const seen = new Set();
  for (const w of list) {
    const key = `${w.kind}/${w.address}`;
    seen.add(key);
    let row = body.querySelector(`tr[data-key="${CSS.escape(key)}"]`);
    if (!row) {
      row = document.createElement("tr");
      row.dataset.key = key;
      for (const cls of ["kind", "address", "state", "in-flight", "load", "dispatched", "changed"]) {
        const td = document.createElement("td");
        td.className = cls;
        row.append(td);
      }
      body.append(row);
    }
    row.dataset.endpoint = w.address;
    row.dataset.kind = w.kind;
    row.dataset.state = w.state;
    const load = w.reported_load || {};
    const cells = row.children;
    cells[0].textContent = w.kind;
    cells[1].textContent = w.address;
    cells[2].textContent = w.state + (w.health_probe ? " (probe)" : "");
    cells[3].textContent = String(w.in_flight);
    cells[4].textContent = load.load === null || load.load === undefined ? "–" : load.load.toFixed(2);
    cells[5].textContent = String(w.dispatched);
    cells[6].textContent = new Date(w.last_change * 1000).toLocaleTimeString();
  }
  for (const row of [...body.children]) if (!seen.has(row.dataset.key)) row.remove();
  for (const kind of ["tts", "stt"]) {
    const rows = list.filter((w) => w.kind === kind);
    const label = kind.toUpperCase();
    if (!rows.length) setAlert(`pool-${kind}`, `No ${label} worker is configured or registered`, "warn");
    else if (!rows.some((w) => w.state === "SERVING"))
      setAlert(`pool-${kind}`, `No ${label} worker is SERVING: ${kind === "tts" ? "Say" : "the microphone"} will fail`);
    else setAlert(`pool-${kind}`, null);
  }
}

// ------------------------------------------------------------------ wiring

$("say-form").addEventListener("submit", (e) => {
  e.preventDefault();
  say($("say-text").value);
});
$("interrupt").addEventListener("click", () => interrupt());
$("mic").addEventListener("click", () => (mic ? stopMic() : startMic()));
$("echo").addEventListener("change", () => {
  // The echo setting is part of the conversation's config: start a new one.
  if (ws) {
    reconfiguring = true;
    ws.close(1000, "config changed");
  }
});
connect();
