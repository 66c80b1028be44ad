//! The SDK's TypeScript types of the protocol (`sdk/js/src/protocol.ts`)
//! are generated from `proto/dongdong.proto` and the close codes here: the
//! test below generates them and compares with the committed file, so the
//! two can never drift. `DD_WRITE_SDK_TYPES=1 cargo test -p im-core
//! sdk_types` writes the file afresh.
//!
//! The types describe protobuf's canonical JSON mapping, which is what the
//! server speaks on text frames: lowerCamelCase names, 64-bit integers as
//! strings, enums by name, bytes as base64, a oneof as one of several
//! optional fields. Every field is optional: the server leaves out fields
//! at their default (an empty string, 0, false).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::CloseCode;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorProto, SourceCodeInfo};
use std::fmt::Write;

const TARGET: &str = "../sdk/js/src/protocol.ts";
/// The proto source for the protobuf codec, as a string constant.
const PROTO_TARGET: &str = "../sdk/js/src/proto.ts";

fn proto_file() -> FileDescriptorProto {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");
    let mut compiler = protox::Compiler::new([dir]).unwrap();
    compiler.include_source_info(true);
    compiler.open_file("dongdong.proto").unwrap();
    let set = compiler.file_descriptor_set();
    set.file.into_iter().find(|f| f.name() == "dongdong.proto").unwrap()
}

/// The comment above the element at `path`, as TSDoc indented by `indent`.
fn doc(info: &SourceCodeInfo, path: &[i32], indent: &str) -> String {
    let Some(loc) = info.location.iter().find(|l| l.path == path) else { return String::new() };
    let text = loc.leading_comments().trim();
    if text.is_empty() {
        return String::new();
    }
    let mut out = format!("{indent}/**\n");
    for line in text.lines() {
        let line = line.strip_prefix(' ').unwrap_or(line).trim_end();
        if line.is_empty() {
            let _ = writeln!(out, "{indent} *");
        } else {
            let _ = writeln!(out, "{indent} * {}", line.replace("*/", "* /"));
        }
    }
    out + &format!("{indent} */\n")
}

/// `.dongdong.v1.LeaveMessageOffer.Reason` -> `LeaveMessageOfferReason`.
fn ts_name(type_name: &str) -> String {
    type_name.trim_start_matches(".dongdong.v1.").replace('.', "")
}

fn json_name(field: &prost_types::FieldDescriptorProto) -> String {
    if let Some(j) = &field.json_name {
        return j.clone();
    }
    let mut out = String::new();
    let mut upper = false;
    for c in field.name().chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn field_type(field: &prost_types::FieldDescriptorProto) -> String {
    let t = match field.r#type() {
        Type::String | Type::Bytes | Type::Int64 | Type::Uint64 | Type::Sint64 | Type::Fixed64 | Type::Sfixed64 => {
            "string".to_string()
        }
        Type::Bool => "boolean".to_string(),
        Type::Int32 | Type::Uint32 | Type::Sint32 | Type::Fixed32 | Type::Sfixed32 | Type::Float | Type::Double => {
            "number".to_string()
        }
        Type::Enum | Type::Message => ts_name(field.type_name()),
        Type::Group => panic!("groups are not used"),
    };
    if field.label() == Label::Repeated { format!("{t}[]") } else { t }
}

fn write_enum(out: &mut String, info: &SourceCodeInfo, path: &[i32], e: &EnumDescriptorProto, name: &str) {
    out.push_str(&doc(info, path, ""));
    let values: Vec<String> = e.value.iter().map(|v| format!("'{}'", v.name())).collect();
    let _ = writeln!(out, "export type {name} =\n  | {};\n", values.join("\n  | "));
}

fn write_message(out: &mut String, info: &SourceCodeInfo, path: &[i32], m: &DescriptorProto, prefix: &str) {
    let name = format!("{prefix}{}", m.name());
    for (i, e) in m.enum_type.iter().enumerate() {
        let mut p = path.to_vec();
        p.extend([4, i as i32]);
        write_enum(out, info, &p, e, &format!("{name}{}", e.name()));
    }
    for (i, nested) in m.nested_type.iter().enumerate() {
        let mut p = path.to_vec();
        p.extend([3, i as i32]);
        write_message(out, info, &p, nested, &name);
    }
    out.push_str(&doc(info, path, ""));
    let _ = writeln!(out, "export interface {name} {{");
    for (i, f) in m.field.iter().enumerate() {
        let mut p = path.to_vec();
        p.extend([2, i as i32]);
        out.push_str(&doc(info, &p, "  "));
        let _ = writeln!(out, "  {}?: {};", json_name(f), field_type(f));
    }
    out.push_str("}\n\n");
}

/// The whole generated file.
pub(crate) fn generate() -> String {
    let file = proto_file();
    let info = file.source_code_info.clone().unwrap_or_default();
    let mut out = String::from(
        "// Generated from im-core/proto/dongdong.proto and im_core::CloseCode by im-core's test\n\
         // `sdk_types::the_committed_sdk_types_are_the_generated_ones`: do not edit; run\n\
         // `DD_WRITE_SDK_TYPES=1 cargo test -p im-core sdk_types` after changing the protocol.\n\
         //\n\
         // Protobuf's canonical JSON mapping (the server's text frames): lowerCamelCase names,\n\
         // 64-bit integers as strings, enums by name. Every field is optional: fields at their\n\
         // default (\"\", 0, false) are left out.\n\n",
    );
    for (i, e) in file.enum_type.iter().enumerate() {
        write_enum(&mut out, &info, &[5, i as i32], e, e.name());
    }
    for (i, m) in file.message_type.iter().enumerate() {
        write_message(&mut out, &info, &[4, i as i32], m, "");
    }
    let names: Vec<String> = file
        .enum_type
        .iter()
        .find(|e| e.name() == "ErrorCode")
        .map(|e| e.value.iter().map(|v| format!("'{}'", v.name())).collect())
        .unwrap_or_default();
    let _ = writeln!(out, "/** Every error code, in the protocol's order. */");
    let _ = writeln!(out, "export const ERROR_CODES: readonly ErrorCode[] = [{}];\n", names.join(", "));
    let _ = writeln!(out, "/** The WebSocket close codes of the protocol (docs/protocol.md, \"Close codes\"). */");
    let _ = writeln!(out, "export const CLOSE = {{");
    for c in CloseCode::ALL {
        let _ = writeln!(out, "  {}: {},", c.name(), c.code());
    }
    out.push_str("} as const;\n");
    out
}

/// The proto file as a TypeScript string constant (for protobufjs).
fn proto_source() -> String {
    let text = include_str!("../proto/dongdong.proto");
    format!(
        "// Generated from im-core/proto/dongdong.proto by im-core's test `sdk_types`: do not edit.\n\n\
         /** The protocol's .proto file, for the protobuf codec. */\n\
         export const PROTO_SOURCE = {};\n",
        serde_json::to_string(text).unwrap()
    )
}

#[test]
fn the_committed_sdk_types_are_the_generated_ones() {
    for (target, generated) in [(TARGET, generate()), (PROTO_TARGET, proto_source())] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(target);
        if std::env::var("DD_WRITE_SDK_TYPES").is_ok_and(|v| v == "1") {
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{} is not what im-core/proto/dongdong.proto generates: run DD_WRITE_SDK_TYPES=1 cargo test -p im-core sdk_types",
            path.display()
        );
    }
}
