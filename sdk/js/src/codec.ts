import type { Frame } from './protocol.js';

/** How frames travel: JSON text messages (the default) or protobuf binary. */
export interface Codec {
  readonly binary: boolean;
  encode(frame: Frame): string | Uint8Array;
  /** A received WebSocket message (text, or bytes for binary codecs). */
  decode(data: string | ArrayBuffer | Uint8Array): Frame;
}

/** Protobuf's canonical JSON, one frame per text message. */
export const jsonCodec: Codec = {
  binary: false,
  encode: (frame) => JSON.stringify(frame),
  decode: (data) => {
    if (typeof data !== 'string') throw new Error('a binary message on a JSON connection');
    return JSON.parse(data) as Frame;
  },
};
