// Microphone capture: hands the input's first channel to the page in blocks
// of about 20 ms at the AudioContext's rate. Resampling to the STT rate
// happens on the page (resampler.js), where it can be flushed and reset.
class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.block = new Float32Array(Math.round(sampleRate / 50));
    this.filled = 0;
    this.active = true;
    this.port.onmessage = (e) => {
      if (e.data && e.data.type === "stop") this.active = false;
    };
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) {
      let offset = 0;
      while (offset < channel.length) {
        const n = Math.min(channel.length - offset, this.block.length - this.filled);
        this.block.set(channel.subarray(offset, offset + n), this.filled);
        this.filled += n;
        offset += n;
        if (this.filled === this.block.length) {
          this.port.postMessage(this.block.slice(0));
          this.filled = 0;
        }
      }
    }
    return this.active;
  }
}

registerProcessor("voxwire-capture", CaptureProcessor);
