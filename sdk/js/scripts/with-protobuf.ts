// The protobuf build's entry, for its size (scripts/bundle.mjs --size).
export * from '../src/index.js';
export { protobufCodec } from '../src/protobuf.js';
