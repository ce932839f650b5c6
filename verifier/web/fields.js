// Bytes, and the strict readers of docs/PROTOCOL.md §6.1-6.2 (verifier/fields.py).
//
// `loadObject` reads the JSON dialect of §6.1, which every JSON parser can be
// held to: UTF-8 without a byte order mark, no key twice in one object (compared
// after unescaping), numbers only as unsigned integer literals of at most 20
// digits (read as BigInt; no sign, fraction, exponent, NaN or Infinity), strings
// of Unicode scalar values (an escaped lone surrogate is refused). JSON.parse
// cannot see a duplicate key, hence this reader. Objects come back with a null
// prototype, arrays as arrays, `true`/`false`/`null` as themselves (no field
// admits them: the field readers refuse them). A document nested deeper than
// MAX_DEPTH is refused; no document of the protocol nests deeper than 4.
//
// `b64` accepts only canonical base64 (§6.2): the one text re-encoding gives.
// Each reader takes the value and a `where` label and throws FormatError naming it.

import { FormatError } from "./errors.js";

const ENCODER = new TextEncoder();
const DECODER = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const LONE_SURROGATE = /\p{Cs}/u; // with the u flag, a paired surrogate is one code point
const MAX_DEPTH = 512;
const INTEGER = /^(?:0|[1-9][0-9]{0,19})$/;
const DECIMAL = /^(?:0|[1-9][0-9]{0,38})$/;
const HEX32 = /^[0-9a-f]{64}$/;
const NUMBER = /-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?/y;
const ESCAPES = { '"': '"', "\\": "\\", "/": "/", b: "\b", f: "\f", n: "\n", r: "\r", t: "\t" };
const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const B64_FORM = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

// bytes

/** The UTF-8 bytes of `text`; FormatError if it holds a lone surrogate. */
export function utf8(text, where = "text") {
  if (LONE_SURROGATE.test(text)) {
    throw new FormatError(`${where} holds a lone surrogate (\\ud800-\\udfff)`);
  }
  return ENCODER.encode(text);
}

/** `bytes` read as strict UTF-8 (no surrogates, no overlong forms), a BOM kept. */
export function fromUtf8(bytes, where = "text") {
  try {
    return DECODER.decode(bytes);
  } catch {
    throw new FormatError(`${where} is not UTF-8`);
  }
}

export function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export function equal(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

export function toHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Bytes of an even number of hex digits (no check: callers match a pattern first). */
export function fromHex(hex) {
  const out = new Uint8Array(hex.length >> 1);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** `value` as `size` big-endian bytes; RangeError if it does not fit (a caller's bug). */
export function bigEndian(value, size) {
  if (value < 0n || value >> BigInt(8 * size) !== 0n) throw new RangeError(`${value} > u${8 * size}`);
  const out = new Uint8Array(size);
  for (let i = size - 1; i >= 0; i--, value >>= 8n) out[i] = Number(value & 0xffn);
  return out;
}

export function readBigEndian(bytes) {
  let value = 0n;
  for (const b of bytes) value = (value << 8n) | BigInt(b);
  return value;
}

export function toBase64(bytes) {
  let out = "";
  for (let i = 0; i < bytes.length; i += 3) {
    const n = (bytes[i] << 16) | ((bytes[i + 1] ?? 0) << 8) | (bytes[i + 2] ?? 0);
    const quad = [18, 12, 6, 0].map((s) => B64[(n >> s) & 63]);
    out += quad.slice(0, Math.min(4, bytes.length - i + 1)).join("");
  }
  return out + "=".repeat((3 - (bytes.length % 3)) % 3);
}

/** Canonical base64 (RFC 4648 §4): alphabet `A-Z a-z 0-9 + /`, padded with `=` to
 * a multiple of 4 characters, the unused bits of the last character zero (§3.5). */
export function b64(value, where) {
  const encoded = text(value, where);
  if (!B64_FORM.test(encoded)) throw new FormatError(`${where} is not base64`);
  const digits = encoded.replace(/=+$/, "");
  const out = new Uint8Array((digits.length * 3) >> 2);
  let bits = 0;
  let acc = 0;
  let at = 0;
  for (const c of digits) {
    acc = ((acc << 6) | B64.indexOf(c)) & 0xffff;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[at++] = (acc >> bits) & 0xff;
    }
  }
  if ((acc & ((1 << bits) - 1)) !== 0) {
    throw new FormatError(`${where} is not canonical base64 (non-zero pad bits)`);
  }
  return out;
}

// the strict JSON dialect

/** Parse `data` (a string, or bytes read as UTF-8) as one JSON object of at most
 * `maxBytes` UTF-8 bytes, in the dialect of the module comment. */
export function loadObject(data, maxBytes, where) {
  let source;
  if (typeof data === "string") {
    if (data.length > maxBytes) throw new FormatError(`${where} is larger than ${maxBytes} bytes`);
    if (LONE_SURROGATE.test(data)) {
      throw new FormatError(`${where} is not UTF-8 (it holds a lone surrogate)`);
    }
    if (ENCODER.encode(data).length > maxBytes) {
      throw new FormatError(`${where} is larger than ${maxBytes} bytes`);
    }
    source = data;
  } else {
    if (data.length > maxBytes) throw new FormatError(`${where} is larger than ${maxBytes} bytes`);
    source = fromUtf8(data, where);
  }
  if (source.startsWith("\ufeff")) {
    throw new FormatError(`${where} starts with a byte order mark (U+FEFF): want UTF-8 without`);
  }
  const doc = new Reader(source, where).document();
  if (!isObject(doc)) throw new FormatError(`${where} must be a JSON object`);
  return doc;
}

export function isObject(value) {
  return typeof value === "object" && value !== null && Object.getPrototypeOf(value) === null;
}

class Reader {
  constructor(source, where) {
    this.s = source;
    this.i = 0;
    this.where = where;
  }

  fail(what) {
    throw new FormatError(`${this.where} is not JSON: ${what} at character ${this.i}`);
  }

  refuse(what) {
    throw new FormatError(`${this.where}: ${what}`);
  }

  space() {
    const s = this.s;
    while (this.i < s.length && " \t\n\r".includes(s[this.i])) this.i++;
  }

  document() {
    this.space();
    const value = this.value(0);
    this.space();
    if (this.i !== this.s.length) this.fail("extra data");
    return value;
  }

  value(depth) {
    const c = this.s[this.i];
    if (c === "{" || c === "[") {
      if (depth >= MAX_DEPTH) this.refuse(`nested deeper than ${MAX_DEPTH}`);
      return c === "{" ? this.object(depth + 1) : this.array(depth + 1);
    }
    if (c === '"') return this.string();
    for (const word of ["NaN", "Infinity", "-Infinity"]) {
      if (this.s.startsWith(word, this.i)) this.refuse(`number '${word}' is not an integer literal`);
    }
    if (c === "-" || (c >= "0" && c <= "9")) return this.number();
    for (const [word, literal] of [["true", true], ["false", false], ["null", null]]) {
      if (this.s.startsWith(word, this.i)) {
        this.i += word.length;
        return literal;
      }
    }
    return this.fail("expecting a value");
  }

  number() {
    NUMBER.lastIndex = this.i;
    const match = NUMBER.exec(this.s);
    if (match === null) return this.fail("expecting a value");
    const literal = match[0];
    if (match[1] !== undefined || match[2] !== undefined) {
      this.refuse(`number '${literal.slice(0, 30)}' is not an integer literal`);
    }
    if (!INTEGER.test(literal)) {
      this.refuse(`number '${literal.slice(0, 30)}' is not an unsigned integer of at most 20 digits`);
    }
    this.i += literal.length;
    return BigInt(literal);
  }

  string() {
    const s = this.s;
    let out = "";
    let i = this.i + 1;
    let start = i;
    for (;;) {
      if (i >= s.length) {
        this.i = i;
        this.fail("unterminated string");
      }
      const c = s.charCodeAt(i);
      if (c === 0x22) {
        this.i = i + 1;
        return out + s.slice(start, i);
      }
      if (c < 0x20) {
        this.i = i;
        this.fail("control character in a string");
      }
      if (c !== 0x5c) {
        i++;
        continue;
      }
      out += s.slice(start, i);
      const escape = s[i + 1];
      if (escape === "u") {
        const unit = this.hex4(i + 2);
        i += 6;
        if (unit >= 0xd800 && unit <= 0xdbff && s.startsWith("\\u", i)) {
          const low = this.hex4(i + 2);
          if (low >= 0xdc00 && low <= 0xdfff) {
            out += String.fromCharCode(unit, low);
            i += 6;
            start = i;
            continue;
          }
        }
        if (unit >= 0xd800 && unit <= 0xdfff) {
          this.refuse("a string holds a lone surrogate (\\ud800-\\udfff)");
        }
        out += String.fromCharCode(unit);
      } else if (Object.hasOwn(ESCAPES, escape ?? "")) {
        out += ESCAPES[escape];
        i += 2;
      } else {
        this.i = i;
        this.fail("invalid escape");
      }
      start = i;
    }
  }

  hex4(at) {
    const digits = this.s.slice(at, at + 4);
    if (!/^[0-9a-fA-F]{4}$/.test(digits)) {
      this.i = at;
      this.fail("invalid \\u escape");
    }
    return parseInt(digits, 16);
  }

  object(depth) {
    const out = Object.create(null);
    this.i++;
    this.space();
    if (this.s[this.i] === "}") {
      this.i++;
      return out;
    }
    for (;;) {
      if (this.s[this.i] !== '"') this.fail("expecting a key");
      const key = this.string();
      this.space();
      if (this.s[this.i] !== ":") this.fail("expecting ':'");
      this.i++;
      this.space();
      const value = this.value(depth);
      if (Object.hasOwn(out, key)) this.refuse(`key ${JSON.stringify(key)} appears twice in one object`);
      out[key] = value;
      this.space();
      const c = this.s[this.i++];
      if (c === "}") return out;
      if (c !== ",") this.fail("expecting ',' or '}'");
      this.space();
    }
  }

  array(depth) {
    const out = [];
    this.i++;
    this.space();
    if (this.s[this.i] === "]") {
      this.i++;
      return out;
    }
    for (;;) {
      out.push(this.value(depth));
      this.space();
      const c = this.s[this.i++];
      if (c === "]") return out;
      if (c !== ",") this.fail("expecting ',' or ']'");
      this.space();
    }
  }
}

// field readers

/** A short description of a JSON value for a message: a string quoted, else its kind. */
export function show(value) {
  if (typeof value === "string") return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}...` : value);
  if (typeof value === "bigint" || typeof value === "boolean" || value === null) return String(value);
  return Array.isArray(value) ? "a list" : "an object";
}

/** `doc` as an object with exactly `keys`: unknown keys are refused too. */
export function exactKeys(doc, keys, where) {
  if (!isObject(doc)) throw new FormatError(`${where} must be a JSON object`);
  const have = Object.keys(doc);
  const missing = keys.filter((k) => !have.includes(k)).sort();
  const extra = have.filter((k) => !keys.includes(k)).sort();
  if (missing.length || extra.length) {
    const list = (names) => `[${names.map((n) => JSON.stringify(n)).join(", ")}]`;
    throw new FormatError(`${where}: missing keys ${list(missing)}, unknown keys ${list(extra)}`);
  }
  return doc;
}

/** A JSON string of Unicode scalar values. */
export function text(value, where) {
  if (typeof value !== "string") throw new FormatError(`${where} must be a string`);
  if (LONE_SURROGATE.test(value)) {
    throw new FormatError(`${where} holds a lone surrogate (\\ud800-\\udfff)`);
  }
  return value;
}

/** A JSON integer >= 0, as BigInt. */
export function natural(value, where) {
  if (typeof value !== "bigint" || value < 0n) {
    throw new FormatError(`${where} must be a non-negative integer`);
  }
  return value;
}

/** An amount as a decimal string of 1-39 digits, no sign or leading zero, as BigInt.
 * Only the syntax is checked: the caller checks the range (PROTOCOL §3). */
export function decimal(value, where) {
  if (typeof value !== "string" || !DECIMAL.test(value)) {
    throw new FormatError(`${where} must be a decimal string of 1-39 digits, no sign or leading 0`);
  }
  return BigInt(value);
}

export function hex32(value, where) {
  if (typeof value !== "string" || !HEX32.test(value)) {
    throw new FormatError(`${where} must be 64 lowercase hex digits (32 bytes)`);
  }
  return fromHex(value);
}

export function hex32List(value, where) {
  if (!Array.isArray(value)) throw new FormatError(`${where} must be a list`);
  return value.map((h, i) => hex32(h, `${where}[${i}]`));
}
