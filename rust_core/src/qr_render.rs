//! Drawing a [`QrCode`]: SVG (one path of run-length row segments) and PNG (1-bit grayscale,
//! our own writer: zlib from miniz_oxide, CRC-32 from crc32fast). Both add the 4-module quiet
//! zone of ISO/IEC 18004 and draw the same modules.

use crate::qr::{QrCode, QrError};

/// Light modules around the symbol on every side.
pub const QUIET_ZONE: usize = 4;
/// The largest module size accepted, in pixels (or SVG user units per module).
pub const MAX_MODULE_PX: i64 = 64;

/// zlib level for the PNG: level 1 is ~2.5× quicker than 6 here for ~20 % more bytes (the
/// repeated scanlines are already all zeros under the Up filter).
const PNG_LEVEL: u8 = 1;

/// `module_px` as a usize, or the error for one outside 1..=MAX_MODULE_PX.
pub fn check_module_px(module_px: i64) -> Result<usize, QrError> {
    if (1..=MAX_MODULE_PX).contains(&module_px) {
        Ok(module_px as usize)
    } else {
        Err(QrError::BadModulePx(module_px))
    }
}

/// Encode and draw as SVG.
pub fn svg_of(text: &str, module_px: i64) -> Result<String, QrError> {
    let px = check_module_px(module_px)?;
    Ok(svg(&QrCode::encode(text)?, px))
}

/// Encode and draw as PNG.
pub fn png_of(text: &str, module_px: i64) -> Result<Vec<u8>, QrError> {
    let px = check_module_px(module_px)?;
    Ok(png(&QrCode::encode(text)?, px))
}

/// Append an unsigned integer in decimal (no formatting machinery: this is the hot loop).
fn push_uint(out: &mut Vec<u8>, mut n: usize) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// A standalone SVG document: viewBox in modules (quiet zone included), width and height
/// `module_px` per module, a white background and one black `<path>` whose subpaths are the
/// horizontal runs of dark modules, `M{x} {y}h{len}v1h-{len}z`.
pub fn svg(code: &QrCode, module_px: usize) -> String {
    let size = code.size();
    let full = size + 2 * QUIET_ZONE;
    let mut out = Vec::with_capacity(256 + size * size * 4);
    out.extend_from_slice(br#"<svg xmlns="http://www.w3.org/2000/svg" width=""#);
    push_uint(&mut out, full * module_px);
    out.extend_from_slice(br#"" height=""#);
    push_uint(&mut out, full * module_px);
    out.extend_from_slice(br#"" viewBox="0 0 "#);
    push_uint(&mut out, full);
    out.push(b' ');
    push_uint(&mut out, full);
    out.extend_from_slice(br##"" shape-rendering="crispEdges"><rect width="100%" height="100%" fill="#fff"/><path fill="#000" d=""##);
    for y in 0..size {
        let row = code.row(y);
        let mut x = 0;
        while x < size {
            if row[x] == 0 {
                x += 1;
                continue;
            }
            let start = x;
            while x < size && row[x] != 0 {
                x += 1;
            }
            let len = x - start;
            out.push(b'M');
            push_uint(&mut out, start + QUIET_ZONE);
            out.push(b' ');
            push_uint(&mut out, y + QUIET_ZONE);
            out.push(b'h');
            push_uint(&mut out, len);
            out.extend_from_slice(b"v1h-");
            push_uint(&mut out, len);
            out.push(b'z');
        }
    }
    out.extend_from_slice(b"\"/></svg>\n");
    String::from_utf8(out).expect("ASCII only")
}

/// A PNG: 1-bit grayscale (0 black, 1 white), `module_px` pixels per module, quiet zone
/// included. Each module row's first scanline is filtered None and its repeats Up (all zero
/// bytes), so the zlib stream is small and quick to make.
pub fn png(code: &QrCode, module_px: usize) -> Vec<u8> {
    let size = code.size();
    let side = (size + 2 * QUIET_ZONE) * module_px;
    let stride = side.div_ceil(8);
    let mut raw = Vec::with_capacity((stride + 1) * side);

    let white_line = {
        let mut line = vec![0xFFu8; stride];
        clear_padding(&mut line, side);
        line
    };
    let push_rows = |raw: &mut Vec<u8>, line: &[u8], count: usize| {
        for i in 0..count {
            if i == 0 {
                raw.push(0); // filter None
                raw.extend_from_slice(line);
            } else {
                raw.push(2); // filter Up: same as the line above
                raw.resize(raw.len() + stride, 0);
            }
        }
    };
    push_rows(&mut raw, &white_line, QUIET_ZONE * module_px);
    let mut line = vec![0u8; stride];
    for y in 0..size {
        line.copy_from_slice(&white_line);
        for (x, &m) in code.row(y).iter().enumerate() {
            if m != 0 {
                let first = (x + QUIET_ZONE) * module_px;
                for p in first..first + module_px {
                    line[p >> 3] &= !(0x80 >> (p & 7));
                }
            }
        }
        push_rows(&mut raw, &line, module_px);
    }
    push_rows(&mut raw, &white_line, QUIET_ZONE * module_px);

    let idat = miniz_oxide::deflate::compress_to_vec_zlib(&raw, PNG_LEVEL);
    let mut out = Vec::with_capacity(idat.len() + 64);
    out.extend_from_slice(b"\x89PNG\r\n\x1a\n");
    let mut ihdr = [0u8; 13];
    ihdr[0..4].copy_from_slice(&(side as u32).to_be_bytes());
    ihdr[4..8].copy_from_slice(&(side as u32).to_be_bytes());
    ihdr[8] = 1; // bit depth
    ihdr[9] = 0; // grayscale; compression, filter, interlace methods 0
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// Padding bits after the last pixel of a scanline are left zero.
fn clear_padding(line: &mut [u8], width: usize) {
    let used = width % 8;
    if used != 0 {
        if let Some(last) = line.last_mut() {
            *last &= 0xFFu8 << (8 - used);
        }
    }
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svg_modules(svg: &str, full: usize) -> Vec<Vec<u8>> {
        let d = svg
            .split(" d=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let mut grid = vec![vec![0u8; full]; full];
        for seg in d.split('M').filter(|s| !s.is_empty()) {
            let (x, rest) = seg.split_once(' ').unwrap();
            let (y, rest) = rest.split_once('h').unwrap();
            let (len, _) = rest.split_once('v').unwrap();
            let (x, y, len): (usize, usize, usize) =
                (x.parse().unwrap(), y.parse().unwrap(), len.parse().unwrap());
            for cell in &mut grid[y][x..x + len] {
                *cell = 1;
            }
        }
        grid
    }

    fn png_pixels(png: &[u8]) -> (usize, Vec<Vec<u8>>) {
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let mut pos = 8;
        let (mut side, mut idat) = (0, Vec::new());
        while pos < png.len() {
            let len = u32::from_be_bytes(png[pos..pos + 4].try_into().unwrap()) as usize;
            let kind = &png[pos + 4..pos + 8];
            let data = &png[pos + 8..pos + 8 + len];
            let crc = u32::from_be_bytes(png[pos + 8 + len..pos + 12 + len].try_into().unwrap());
            assert_eq!(crc, crc32fast::hash(&png[pos + 4..pos + 8 + len]));
            match kind {
                b"IHDR" => side = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize,
                b"IDAT" => idat.extend_from_slice(data),
                _ => {}
            }
            pos += 12 + len;
        }
        let raw = crate::zlib::inflate_limited(&idat, 1 << 24).unwrap();
        let stride = side.div_ceil(8);
        let mut prev = vec![0u8; stride];
        let mut rows = Vec::new();
        for line in raw.chunks(stride + 1) {
            let mut cur = line[1..].to_vec();
            if line[0] == 2 {
                for (c, p) in cur.iter_mut().zip(&prev) {
                    *c = c.wrapping_add(*p);
                }
            } else {
                assert_eq!(line[0], 0);
            }
            rows.push(
                (0..side)
                    .map(|x| u8::from(cur[x >> 3] & (0x80 >> (x & 7)) == 0))
                    .collect(),
            );
            prev = cur;
        }
        (side, rows)
    }

    #[test]
    fn svg_and_png_draw_the_same_modules() {
        let code = QrCode::encode("LIC1:6BFOXN*TS0BI$ZDFRH").unwrap();
        let full = code.size() + 2 * QUIET_ZONE;
        let grid = svg_modules(&svg(&code, 3), full);
        for px in [1, 3, 8] {
            let (side, pixels) = png_pixels(&png(&code, px));
            assert_eq!(side, full * px);
            for (y, row) in grid.iter().enumerate() {
                for (x, &m) in row.iter().enumerate() {
                    assert_eq!(
                        pixels[y * px + px / 2][x * px + px / 2],
                        m,
                        "({x}, {y}) px {px}"
                    );
                }
            }
        }
        let symbol = QUIET_ZONE..QUIET_ZONE + code.size();
        for (y, row) in grid.iter().enumerate() {
            for (x, &m) in row.iter().enumerate() {
                let inside = symbol.contains(&x) && symbol.contains(&y);
                let expected = inside && code.is_dark(x - QUIET_ZONE, y - QUIET_ZONE);
                assert_eq!(m, u8::from(expected), "({x}, {y})");
            }
        }
    }

    #[test]
    fn module_px_is_checked() {
        assert_eq!(svg_of("A", 0), Err(QrError::BadModulePx(0)));
        assert_eq!(png_of("A", 65), Err(QrError::BadModulePx(65)));
        assert_eq!(png_of("A", -1), Err(QrError::BadModulePx(-1)));
        assert!(svg_of("A", 64).is_ok());
        assert!(svg(&QrCode::encode("A").unwrap(), 2).contains(r#"width="58" height="58""#));
    }
}
