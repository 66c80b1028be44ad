/**
 * Protobuf binary frames (`@dongdong/client/protobuf`): the same frames as
 * the JSON default, smaller on the wire. Needs the `protobufjs` package.
 *
 * ```ts
 * import { protobufCodec } from '@dongdong/client/protobuf';
 * new DongdongClient({ url, token, deviceId, codec: protobufCodec() });
 * ```
 */
import protobuf from 'protobufjs';
import type { Codec } from './codec.js';
import type { Frame } from './protocol.js';
import { PROTO_SOURCE } from './proto.js';

export function protobufCodec(): Codec {
  const root = protobuf.parse(PROTO_SOURCE, { keepCase: false }).root;
  const type = root.lookupType('dongdong.v1.Frame');
  const options = { longs: String, enums: String, bytes: String, defaults: false, oneofs: false };
  return {
    binary: true,
    encode: (frame) => type.encode(type.fromObject(frame as Record<string, unknown>)).finish(),
    decode: (data) => {
      const bytes = data instanceof Uint8Array ? data : new Uint8Array(data as ArrayBuffer);
      return type.toObject(type.decode(bytes), options) as Frame;
    },
  };
}
