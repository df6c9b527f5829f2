// TTS playback: a queue of chunks (one per received frame, already at the
// AudioContext's rate) behind a small jitter buffer. A turn starts playing
// once JITTER_MS of it is queued or its last frame arrived, so network
// jitter does not become audible gaps; "stop" empties the queue at once
// (barge-in) and answers "stopped".
const JITTER_MS = 60;

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.queue = [];      // {samples, turn, final}
    this.offset = 0;      // read position in queue[0]
    this.queued = 0;      // samples queued
    this.started = false; // the current turn passed the jitter buffer
    this.finalQueued = false;
    this.turn = 0;
    this.playing = false;
    this.port.onmessage = (e) => this.onMessage(e.data);
  }

  onMessage(msg) {
    if (msg.type === "push") {
      this.queue.push(msg);
      this.queued += msg.samples.length;
      if (msg.final) this.finalQueued = true;
    } else if (msg.type === "stop") {
      this.queue = [];
      this.offset = 0;
      this.queued = 0;
      this.started = false;
      this.finalQueued = false;
      this.setPlaying(false);
      this.port.postMessage({ type: "stopped", token: msg.token, time: currentTime });
    }
  }

  setPlaying(playing) {
    if (this.playing !== playing) {
      this.playing = playing;
      this.port.postMessage({ type: "playing", playing, turn: this.turn });
    }
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    out.fill(0);
    if (!this.started) {
      const enough = this.queued >= (sampleRate * JITTER_MS) / 1000;
      if (this.queue.length && (enough || this.finalQueued)) this.started = true;
      else return true;
    }
    let written = 0;
    let framesDone = 0;
    while (written < out.length && this.queue.length) {
      const head = this.queue[0];
      if (head.turn !== this.turn) {
        this.turn = head.turn;
        this.port.postMessage({ type: "turn-audio", turn: head.turn });
      }
      const n = Math.min(out.length - written, head.samples.length - this.offset);
      out.set(head.samples.subarray(this.offset, this.offset + n), written);
      written += n;
      this.offset += n;
      this.queued -= n;
      if (this.offset === head.samples.length) {
        this.queue.shift();
        this.offset = 0;
        if (head.frame) framesDone += 1;
        if (head.final) this.finalQueued = this.queue.some((c) => c.final);
      }
    }
    for (let ch = 1; ch < outputs[0].length; ch++) outputs[0][ch].set(out);
    if (framesDone) this.port.postMessage({ type: "played", frames: framesDone });
    if (!this.queue.length) {
      // Underrun: wait for the jitter buffer to fill again.
      this.started = false;
      this.setPlaying(false);
    } else {
      this.setPlaying(true);
    }
    return true;
  }
}

registerProcessor("voxwire-playback", PlaybackProcessor);
