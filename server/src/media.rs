//! What an upload becomes before it is stored: its type sniffed from the
//! bytes (never taken from the client), checked against the allowed types;
//! for images, the pixel count bounded before decoding (decompression
//! bombs), metadata stripped (EXIF and XMP hold customers' locations), a
//! thumbnail made.
//!
//! Stripping is lossless where it can be: JPEG segments APP1 and APP3–APP13,
//! APP15 and comments are dropped (APP0, the ICC profile in APP2 and Adobe's
//! APP14 stay: colours depend on them); a JPEG whose EXIF says it is rotated
//! is re-encoded upright instead (quality 90), since its orientation goes
//! with the EXIF. PNG loses its eXIf, tEXt, zTXt, iTXt and tIME chunks, WebP
//! its EXIF and XMP chunks. GIF is stored as uploaded (it carries no EXIF).

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};
use std::io::Cursor;

/// Longest side of a thumbnail, in pixels.
pub const THUMBNAIL_SIDE: u32 = 320;

/// An upload ready to store.
pub struct Processed {
    pub content_type: String,
    pub bytes: Vec<u8>,
    pub width: u32,
    pub height: u32,
    /// Its type and bytes.
    pub thumbnail: Option<(&'static str, Vec<u8>)>,
}

/// Why an upload is refused (all the client's doing).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MediaError {
    #[error("the body is empty")]
    Empty,
    #[error("files of type {0} are not accepted here (files.allowed_types)")]
    NotAllowed(String),
    #[error("the request says {declared} but the bytes are {sniffed}")]
    Mismatch { declared: String, sniffed: String },
    #[error("the image has {pixels} pixels, more than files.max_pixels ({max})")]
    TooManyPixels { pixels: u64, max: u64 },
    #[error("the image cannot be read: {0}")]
    Undecodable(String),
}

/// The type of `bytes`: from their magic numbers, else `text/plain` for
/// UTF-8 text, else `application/octet-stream`.
pub fn sniff(bytes: &[u8]) -> String {
    match infer::get(bytes) {
        Some(t) => t.mime_type().to_string(),
        None if std::str::from_utf8(bytes).is_ok() => "text/plain".to_string(),
        None => "application/octet-stream".to_string(),
    }
}

/// The media type of a Content-Type header value, without parameters.
fn essence(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

pub fn process(
    bytes: Vec<u8>,
    declared: Option<&str>,
    allowed: &[String],
    max_pixels: u64,
) -> Result<Processed, MediaError> {
    if bytes.is_empty() {
        return Err(MediaError::Empty);
    }
    let sniffed = sniff(&bytes);
    if let Some(d) = declared.map(essence).filter(|d| !d.is_empty() && d != "application/octet-stream")
        && d != sniffed
        // Text sent as another text type (text/markdown, text/csv) is text.
        && !(sniffed == "text/plain" && d.starts_with("text/"))
    {
        return Err(MediaError::Mismatch { declared: d, sniffed });
    }
    if !allowed.iter().any(|a| a.eq_ignore_ascii_case(&sniffed)) {
        return Err(MediaError::NotAllowed(sniffed));
    }
    let format = match sniffed.as_str() {
        "image/jpeg" => ImageFormat::Jpeg,
        "image/png" => ImageFormat::Png,
        "image/webp" => ImageFormat::WebP,
        "image/gif" => ImageFormat::Gif,
        _ => return Ok(Processed { content_type: sniffed, bytes, width: 0, height: 0, thumbnail: None }),
    };
    let (width, height) = ImageReader::with_format(Cursor::new(&bytes), format)
        .into_dimensions()
        .map_err(|e| MediaError::Undecodable(e.to_string()))?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(MediaError::TooManyPixels { pixels, max: max_pixels });
    }
    let mut reader = ImageReader::with_format(Cursor::new(&bytes), format);
    let mut limits = Limits::default();
    limits.max_alloc = Some(pixels.saturating_mul(8).max(64 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| MediaError::Undecodable(e.to_string()))?;
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| MediaError::Undecodable(e.to_string()))?;
    img.apply_orientation(orientation);
    let rotated = orientation != image::metadata::Orientation::NoTransforms;
    let stored = match format {
        ImageFormat::Jpeg if rotated => encode_jpeg(&img, 90)?,
        ImageFormat::Jpeg => strip_jpeg(&bytes).ok_or_else(|| MediaError::Undecodable("bad JPEG segments".into()))?,
        ImageFormat::Png => strip_png(&bytes).ok_or_else(|| MediaError::Undecodable("bad PNG chunks".into()))?,
        ImageFormat::WebP => strip_webp(&bytes).ok_or_else(|| MediaError::Undecodable("bad WebP chunks".into()))?,
        _ => bytes,
    };
    let thumb = if img.width().max(img.height()) > THUMBNAIL_SIDE {
        img.thumbnail(THUMBNAIL_SIDE, THUMBNAIL_SIDE)
    } else {
        img.clone()
    };
    let thumbnail = if thumb.color().has_alpha() {
        let mut out = Cursor::new(Vec::new());
        thumb.write_to(&mut out, ImageFormat::Png).map_err(|e| MediaError::Undecodable(e.to_string()))?;
        ("image/png", out.into_inner())
    } else {
        ("image/jpeg", encode_jpeg(&thumb, 80)?)
    };
    Ok(Processed {
        content_type: sniffed,
        bytes: stored,
        width: img.width(),
        height: img.height(),
        thumbnail: Some(thumbnail),
    })
}

fn encode_jpeg(img: &DynamicImage, quality: u8) -> Result<Vec<u8>, MediaError> {
    let mut out = Vec::new();
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
    img.to_rgb8().write_with_encoder(encoder).map_err(|e| MediaError::Undecodable(e.to_string()))?;
    Ok(out)
}

/// The JPEG without its metadata segments; `None` if the segments do not
/// parse.
pub fn strip_jpeg(b: &[u8]) -> Option<Vec<u8>> {
    if b.get(..2)? != [0xFF, 0xD8] {
        return None;
    }
    let mut out = Vec::with_capacity(b.len());
    out.extend_from_slice(&b[..2]);
    let mut i = 2;
    loop {
        if *b.get(i)? != 0xFF {
            return None;
        }
        while *b.get(i + 1)? == 0xFF {
            i += 1; // fill bytes
        }
        let marker = *b.get(i + 1)?;
        if marker == 0xD9 || (0xD0..=0xD7).contains(&marker) || marker == 0x01 {
            out.extend_from_slice(&b[i..i + 2]);
            if marker == 0xD9 {
                return Some(out);
            }
            i += 2;
            continue;
        }
        let len = usize::from(u16::from_be_bytes([*b.get(i + 2)?, *b.get(i + 3)?]));
        let end = i.checked_add(2 + len)?;
        let segment = b.get(i..end)?;
        if marker == 0xDA {
            // Start of scan: the entropy-coded data and all after it as is.
            out.extend_from_slice(&b[i..]);
            return Some(out);
        }
        let metadata = marker == 0xE1 || (0xE3..=0xED).contains(&marker) || marker == 0xEF || marker == 0xFE;
        if !metadata {
            out.extend_from_slice(segment);
        }
        i = end;
    }
}

/// The PNG without its text, time and EXIF chunks.
pub fn strip_png(b: &[u8]) -> Option<Vec<u8>> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if b.get(..8)? != SIGNATURE {
        return None;
    }
    let mut out = Vec::with_capacity(b.len());
    out.extend_from_slice(SIGNATURE);
    let mut i = 8;
    while i < b.len() {
        let len = u32::from_be_bytes(b.get(i..i + 4)?.try_into().ok()?) as usize;
        let end = i.checked_add(12)?.checked_add(len)?;
        let chunk = b.get(i..end)?;
        let kind = &chunk[4..8];
        if !matches!(kind, b"eXIf" | b"tEXt" | b"zTXt" | b"iTXt" | b"tIME") {
            out.extend_from_slice(chunk);
        }
        i = end;
        if kind == b"IEND" {
            break;
        }
    }
    Some(out)
}

/// The WebP without its EXIF and XMP chunks (and their VP8X flags).
pub fn strip_webp(b: &[u8]) -> Option<Vec<u8>> {
    if b.get(..4)? != b"RIFF" || b.get(8..12)? != b"WEBP" {
        return None;
    }
    let mut out = Vec::with_capacity(b.len());
    out.extend_from_slice(&b[..12]);
    let mut i = 12;
    while i + 8 <= b.len() {
        let kind = &b[i..i + 4];
        let len = u32::from_le_bytes(b[i + 4..i + 8].try_into().ok()?) as usize;
        let end = i.checked_add(8)?.checked_add(len + (len & 1))?.min(b.len());
        let chunk = b.get(i..end)?;
        if kind == b"VP8X" && chunk.len() > 8 {
            let mut c = chunk.to_vec();
            c[8] &= !(0x08 | 0x04); // the EXIF and XMP flags
            out.extend_from_slice(&c);
        } else if kind != b"EXIF" && kind != b"XMP " {
            out.extend_from_slice(chunk);
        }
        i = end;
    }
    let size = u32::try_from(out.len() - 8).ok()?;
    out[4..8].copy_from_slice(&size.to_le_bytes());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<String> {
        ["image/jpeg", "image/png", "image/webp", "image/gif", "application/pdf", "text/plain"]
            .map(String::from)
            .to_vec()
    }

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = DynamicImage::new_rgb8(w, h);
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    /// A JPEG with an EXIF segment holding GPS-like text and `orientation`.
    fn jpeg_with_exif(orientation: u16) -> Vec<u8> {
        let plain = encode_jpeg(&DynamicImage::new_rgb8(40, 20), 90).unwrap();
        // Exif header, a little-endian TIFF with one IFD entry (Orientation).
        let mut tiff = b"II*\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00\x01\x00\x00\x00".to_vec();
        tiff.extend_from_slice(&orientation.to_le_bytes());
        tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let mut app1 = b"Exif\x00\x00".to_vec();
        app1.extend_from_slice(&tiff);
        app1.extend_from_slice(b"GPS 31.2304N 121.4737E");
        let mut out = plain[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&app1);
        out.extend_from_slice(&plain[2..]);
        out
    }

    #[test]
    fn exif_is_stripped_and_rotation_kept() {
        let upright = jpeg_with_exif(1);
        assert!(upright.windows(3).any(|w| w == b"GPS"));
        let p = process(upright, Some("image/jpeg"), &allowed(), 1 << 20).unwrap();
        assert!(!p.bytes.windows(4).any(|w| w == b"Exif") && !p.bytes.windows(3).any(|w| w == b"GPS"));
        assert_eq!((p.width, p.height, p.content_type.as_str()), (40, 20, "image/jpeg"));
        image::load_from_memory(&p.bytes).expect("still a JPEG");
        // Orientation 6 (rotate 90°): stored upright, without the EXIF.
        let p = process(jpeg_with_exif(6), None, &allowed(), 1 << 20).unwrap();
        assert_eq!((p.width, p.height), (20, 40));
        assert!(!p.bytes.windows(3).any(|w| w == b"GPS"));
        let (kind, thumb) = p.thumbnail.unwrap();
        assert_eq!(kind, "image/jpeg");
        assert_eq!(image::load_from_memory(&thumb).unwrap().height(), 40, "small images keep their size");
    }

    #[test]
    fn png_text_chunks_go_and_thumbnails_are_bounded() {
        let mut b = png(1000, 500);
        // A tEXt chunk before IEND.
        let iend = b.len() - 12;
        let text = b"Comment\x00home is at 31.2N";
        let mut chunk = (text.len() as u32).to_be_bytes().to_vec();
        chunk.extend_from_slice(b"tEXt");
        chunk.extend_from_slice(text);
        chunk.extend_from_slice(&[0, 0, 0, 0]);
        b.splice(iend..iend, chunk);
        let p = process(b, Some("image/png; charset=x"), &allowed(), 1 << 24).unwrap();
        assert!(!p.bytes.windows(4).any(|w| w == b"tEXt"));
        image::load_from_memory(&p.bytes).expect("still a PNG");
        let thumb = image::load_from_memory(&p.thumbnail.unwrap().1).unwrap();
        assert_eq!((thumb.width(), thumb.height()), (320, 160));
    }

    #[test]
    fn refusals_say_why() {
        assert_eq!(process(Vec::new(), None, &allowed(), 100).err(), Some(MediaError::Empty));
        let err = process(png(10, 10), Some("image/jpeg"), &allowed(), 100).err();
        assert_eq!(err, Some(MediaError::Mismatch { declared: "image/jpeg".into(), sniffed: "image/png".into() }));
        let err = process(png(200, 200), None, &allowed(), 1000).err();
        assert_eq!(err, Some(MediaError::TooManyPixels { pixels: 40_000, max: 1000 }));
        // HTML is refused (and other text is only ever served as text/plain).
        let html = b"<html><script>alert(1)</script></html>".to_vec();
        assert_eq!(process(html, None, &allowed(), 1).err(), Some(MediaError::NotAllowed("text/html".into())));
        let notes = b"order 1234: broken on arrival".to_vec();
        assert_eq!(process(notes, Some("text/markdown"), &allowed(), 1).unwrap().content_type, "text/plain");
        let zip = b"PK\x03\x04rest of a zip".to_vec();
        assert_eq!(process(zip, None, &allowed(), 1).err(), Some(MediaError::NotAllowed("application/zip".into())));
        let mut bad = png(10, 10);
        bad.truncate(40);
        assert!(matches!(process(bad, None, &allowed(), 1000), Err(MediaError::Undecodable(_))));
    }

    #[test]
    fn strippers_never_panic_on_garbage() {
        for len in 0..64 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
            for prefix in [&b"\xFF\xD8"[..], b"\x89PNG\r\n\x1a\n", b"RIFF\x10\x00\x00\x00WEBP"] {
                let mut b = prefix.to_vec();
                b.extend_from_slice(&junk);
                let _ = (strip_jpeg(&b), strip_png(&b), strip_webp(&b));
            }
        }
    }
}
