// Streaming sample-rate conversion with a Hann-windowed sinc kernel. The
// cut-off follows the lower of the two rates, so downsampling the
// microphone (48 kHz to 16 kHz) does not alias. The output of successive
// process() calls equals one call on the concatenated input; flush() emits
// what the kernel still holds back.
export class Resampler {
  constructor(fromRate, toRate, halfTaps = 16) {
    this.from = fromRate;
    this.to = toRate;
    this.step = fromRate / toRate;          // input samples per output sample
    this.cutoff = Math.min(1, toRate / fromRate);
    this.half = Math.ceil(halfTaps / this.cutoff);
    this.buf = new Float32Array(this.half); // history, zeros before the start
    this.pos = this.half;                   // next output, in buf coordinates
  }

  process(input) {
    if (this.from === this.to) return Float32Array.from(input);
    const buf = new Float32Array(this.buf.length + input.length);
    buf.set(this.buf);
    buf.set(input, this.buf.length);
    const out = [];
    const half = this.half;
    while (Math.floor(this.pos) + half < buf.length) {
      const i0 = Math.floor(this.pos);
      let acc = 0;
      let norm = 0;
      for (let k = i0 - half + 1; k <= i0 + half; k++) {
        const d = k - this.pos;
        const x = d * this.cutoff;
        const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
        const h = sinc * (0.5 + 0.5 * Math.cos((Math.PI * d) / half));
        acc += buf[k] * h;
        norm += h;
      }
      out.push(norm !== 0 ? acc / norm : 0);
      this.pos += this.step;
    }
    const drop = Math.floor(this.pos) - half;
    if (drop > 0) {
      this.buf = buf.slice(drop);
      this.pos -= drop;
    } else {
      this.buf = buf;
    }
    return Float32Array.from(out);
  }

  flush() {
    const out = this.process(new Float32Array(this.half + 1));
    this.buf = new Float32Array(this.half);
    this.pos = this.half;
    return out;
  }
}

export function int16ToFloat(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(bytes.byteLength >> 1);
  for (let i = 0; i < out.length; i++) out[i] = view.getInt16(i * 2, true) / 32768;
  return out;
}

export function floatToInt16(samples) {
  const out = new ArrayBuffer(samples.length * 2);
  const view = new DataView(out);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    view.setInt16(i * 2, s < 0 ? s * 32768 : s * 32767, true);
  }
  return out;
}
