//! QR Code Model 2 encoder (ISO/IEC 18004:2015) for LIC1 texts: one alphanumeric-mode segment,
//! error correction level Q, the smallest version (1-40) that holds the text, and the data mask
//! chosen by the standard's penalty rules (7.8.3.1, all eight masks evaluated).
//!
//! LIC1 (and EU DCC "HC1:") texts are "PREFIX:" + Base45, and the Base45 alphabet (RFC 9285) is
//! exactly the QR alphanumeric set, so every such text is one alphanumeric segment. A text with
//! any other character is refused ([`QrError::NotAlphanumeric`]) rather than silently switched to
//! byte mode: what we print is always the dense, scanner-friendly form the issue asks for.
//!
//! The mask evaluation follows segno's reading of the standard, module for module:
//! penalties are computed before the format and version information are placed (those areas
//! count as light), N3 looks for 1:1:3:1:1 with four light modules before *or* after it
//! (outside the symbol is light), and N4 is 10 × floor(|dark% − 50| / 5). Ties go to the lower
//! mask number. Our symbols therefore equal segno's, module for module, for every text and
//! version (`tests/test_qr.py`), except where segno departs from 7.4.10: when the data and
//! terminator end exactly on a codeword boundary segno adds a 0x00 codeword before the pad
//! codewords, while we add no padding bits there (as the standard, zxing and Nayuki's encoder
//! do). With segno's padding put right the two agree there too.

use std::fmt;

/// The QR alphanumeric character set, in value order (0-44); identical to the Base45 alphabet.
pub const ALPHANUMERIC: &[u8; 45] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:";

/// Alphanumeric characters that fit in the largest symbol (version 40) at level Q.
pub const MAX_CHARS_Q: usize = 2420;

/// Error correction codewords per block, level Q, by version (index 0 unused).
const ECC_PER_BLOCK_Q: [u8; 41] = [
    0, 13, 22, 18, 26, 18, 24, 18, 22, 20, 24, 28, 26, 24, 20, 30, 24, 28, 28, 26, 30, 28, 30, 30,
    30, 30, 28, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30,
];

/// Error correction blocks, level Q, by version (index 0 unused).
const BLOCKS_Q: [u8; 41] = [
    0, 1, 1, 2, 2, 4, 4, 6, 6, 8, 8, 8, 10, 12, 16, 12, 17, 16, 18, 21, 20, 23, 23, 25, 27, 29, 34,
    34, 35, 38, 40, 43, 45, 48, 51, 53, 56, 59, 62, 65, 68,
];

/// Format information error-correction-level bits for Q (Table 12).
const ECL_Q_BITS: u32 = 0b11;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QrError {
    /// Nothing to encode.
    Empty,
    /// A character outside the QR alphanumeric set (`0-9A-Z $%*+-./:`), at this char index.
    NotAlphanumeric { index: usize, ch: char },
    /// More characters than a version 40-Q symbol holds.
    TooLong { chars: usize },
    /// A module size outside 1..=MAX_MODULE_PX (rendering).
    BadModulePx(i64),
}

impl fmt::Display for QrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QrError::Empty => write!(f, "an empty text makes no QR code"),
            QrError::NotAlphanumeric { index, ch } => write!(
                f,
                "character {ch:?} at index {index} is not in the QR alphanumeric set \
                 (0-9 A-Z space $ % * + - . / :)"
            ),
            QrError::TooLong { chars } => write!(
                f,
                "the text is {chars} characters, more than a version 40-Q QR code holds \
                 ({MAX_CHARS_Q} alphanumeric characters)"
            ),
            QrError::BadModulePx(px) => write!(
                f,
                "module_px must be 1 to {}, not {px}",
                crate::qr_render::MAX_MODULE_PX
            ),
        }
    }
}

impl std::error::Error for QrError {}

/// An encoded symbol: `size` × `size` modules, row-major, 1 = dark; no quiet zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QrCode {
    version: u8,
    mask: u8,
    size: usize,
    modules: Vec<u8>,
}

impl QrCode {
    /// Encode `text` as one alphanumeric segment at level Q in the smallest version that fits.
    pub fn encode(text: &str) -> Result<QrCode, QrError> {
        let values = alphanumeric_values(text)?;
        let version = smallest_version(values.len()).ok_or(QrError::TooLong {
            chars: values.len(),
        })?;
        let data = data_codewords(&values, version);
        let codewords = add_error_correction(&data, version);
        Ok(build(version, &codewords))
    }

    /// 1-40.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// The data mask pattern chosen, 0-7.
    pub fn mask(&self) -> u8 {
        self.mask
    }

    /// Modules per side (4 × version + 17), without the quiet zone.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Module at column `x`, row `y` (both < size): dark?
    pub fn is_dark(&self, x: usize, y: usize) -> bool {
        self.modules[y * self.size + x] != 0
    }

    /// Row `y` as 0/1 bytes.
    pub fn row(&self, y: usize) -> &[u8] {
        &self.modules[y * self.size..(y + 1) * self.size]
    }

    /// Rows as strings of '1' (dark) and '0' (light).
    pub fn to_strings(&self) -> Vec<String> {
        (0..self.size)
            .map(|y| self.row(y).iter().map(|&m| char::from(b'0' + m)).collect())
            .collect()
    }
}

// ---- data encoding (7.4) ------------------------------------------------------------------

fn alphanumeric_values(text: &str) -> Result<Vec<u8>, QrError> {
    if text.is_empty() {
        return Err(QrError::Empty);
    }
    let mut table = [u8::MAX; 128];
    for (value, &c) in ALPHANUMERIC.iter().enumerate() {
        table[usize::from(c)] = value as u8;
    }
    text.chars()
        .enumerate()
        .map(|(index, ch)| {
            let value = if ch.is_ascii() {
                table[ch as usize]
            } else {
                u8::MAX
            };
            if value == u8::MAX {
                Err(QrError::NotAlphanumeric { index, ch })
            } else {
                Ok(value)
            }
        })
        .collect()
}

fn char_count_bits(version: u8) -> usize {
    match version {
        1..=9 => 9,
        10..=26 => 11,
        _ => 13,
    }
}

/// Modules available for data and error correction codewords (remainder bits included).
fn raw_data_modules(version: u8) -> usize {
    let v = usize::from(version);
    let mut result = (16 * v + 128) * v + 64;
    if v >= 2 {
        let align = v / 7 + 2;
        result -= (25 * align - 10) * align - 55;
        if v >= 7 {
            result -= 36;
        }
    }
    result
}

fn total_codewords(version: u8) -> usize {
    raw_data_modules(version) / 8
}

fn data_codeword_count(version: u8) -> usize {
    let v = usize::from(version);
    total_codewords(version) - usize::from(ECC_PER_BLOCK_Q[v]) * usize::from(BLOCKS_Q[v])
}

fn segment_bits(chars: usize, version: u8) -> usize {
    4 + char_count_bits(version) + 11 * (chars / 2) + 6 * (chars % 2)
}

fn smallest_version(chars: usize) -> Option<u8> {
    (1..=40u8).find(|&v| segment_bits(chars, v) <= data_codeword_count(v) * 8)
}

struct BitWriter {
    bytes: Vec<u8>,
    bits: usize,
}

impl BitWriter {
    fn push(&mut self, value: u32, count: usize) {
        for i in (0..count).rev() {
            if self.bits % 8 == 0 {
                self.bytes.push(0);
            }
            if (value >> i) & 1 != 0 {
                *self.bytes.last_mut().expect("pushed above") |= 0x80 >> (self.bits % 8);
            }
            self.bits += 1;
        }
    }
}

/// Mode indicator, character count, the pairs (11 bits) and a last single (6 bits), the
/// terminator, zero bits to a byte boundary, then the pad codewords 0xEC 0x11 … (7.4.9-7.4.10).
fn data_codewords(values: &[u8], version: u8) -> Vec<u8> {
    let capacity = data_codeword_count(version);
    let mut w = BitWriter {
        bytes: Vec::with_capacity(capacity),
        bits: 0,
    };
    w.push(0b0010, 4);
    w.push(values.len() as u32, char_count_bits(version));
    for pair in values.chunks(2) {
        match *pair {
            [a, b] => w.push(u32::from(a) * 45 + u32::from(b), 11),
            [a] => w.push(u32::from(a), 6),
            _ => unreachable!("chunks(2)"),
        }
    }
    let terminator = (capacity * 8 - w.bits).min(4);
    w.push(0, terminator);
    // The byte-boundary padding is already zero in the last byte.
    w.bits = w.bytes.len() * 8;
    for pad in [0xEC, 0x11].into_iter().cycle() {
        if w.bytes.len() >= capacity {
            break;
        }
        w.bytes.push(pad);
    }
    w.bytes
}

// ---- error correction (7.5, 7.6) ---------------------------------------------------------

/// GF(256) with the QR polynomial x^8 + x^4 + x^3 + x^2 + 1: (exp, log) tables; exp is doubled
/// so a product's log sum needs no reduction.
const GF: ([u8; 512], [u8; 256]) = {
    let mut exp = [0u8; 512];
    let mut log = [0u8; 256];
    let mut x: u16 = 1;
    let mut i = 0;
    while i < 255 {
        exp[i] = x as u8;
        exp[i + 255] = x as u8;
        log[x as usize] = i as u8;
        x <<= 1;
        if x & 0x100 != 0 {
            x ^= 0x11D;
        }
        i += 1;
    }
    (exp, log)
};

/// The generator polynomial (x - α^0)…(x - α^(n-1)) as logs of its coefficients, leading 1
/// omitted, highest degree first.
fn generator_logs(degree: usize) -> Vec<u8> {
    let (exp, log) = (&GF.0, &GF.1);
    // coefficients, highest degree first, leading 1 implicit
    let mut poly = vec![0u8; degree];
    poly[degree - 1] = 1;
    let mut root: u8 = 1;
    for _ in 0..degree {
        for j in 0..degree {
            let product = if poly[j] == 0 {
                0
            } else {
                exp[usize::from(log[usize::from(poly[j])]) + usize::from(log[usize::from(root)])]
            };
            poly[j] = product ^ poly.get(j + 1).copied().unwrap_or(0);
        }
        root = exp[usize::from(log[usize::from(root)]) + 1];
    }
    poly.iter().map(|&c| log[usize::from(c)]).collect()
}

fn ecc_block(data: &[u8], generator: &[u8]) -> Vec<u8> {
    let (exp, log) = (&GF.0, &GF.1);
    let mut rem = vec![0u8; generator.len()];
    for &byte in data {
        let factor = byte ^ rem[0];
        rem.rotate_left(1);
        *rem.last_mut().expect("degree > 0") = 0;
        if factor != 0 {
            let lf = usize::from(log[usize::from(factor)]);
            for (r, &g) in rem.iter_mut().zip(generator) {
                *r ^= exp[usize::from(g) + lf];
            }
        }
    }
    rem
}

/// Split into blocks (short blocks first), add each block's error correction, interleave.
fn add_error_correction(data: &[u8], version: u8) -> Vec<u8> {
    let v = usize::from(version);
    let blocks = usize::from(BLOCKS_Q[v]);
    let ecc_len = usize::from(ECC_PER_BLOCK_Q[v]);
    let total = total_codewords(version);
    let short_blocks = blocks - total % blocks;
    let short_data = total / blocks - ecc_len;
    let generator = generator_logs(ecc_len);

    let mut data_blocks = Vec::with_capacity(blocks);
    let mut ecc_blocks = Vec::with_capacity(blocks);
    let mut start = 0;
    for i in 0..blocks {
        let len = short_data + usize::from(i >= short_blocks);
        let block = &data[start..start + len];
        start += len;
        ecc_blocks.push(ecc_block(block, &generator));
        data_blocks.push(block);
    }
    let mut out = Vec::with_capacity(total);
    for i in 0..=short_data {
        out.extend(data_blocks.iter().filter_map(|b| b.get(i)));
    }
    for i in 0..ecc_len {
        out.extend(ecc_blocks.iter().map(|b| b[i]));
    }
    debug_assert_eq!(out.len(), total);
    out
}

// ---- the symbol (6.3, 7.7-7.10) ----------------------------------------------------------

/// Centre coordinates of the alignment patterns (Annex E).
fn alignment_positions(version: u8) -> Vec<usize> {
    if version == 1 {
        return Vec::new();
    }
    let v = usize::from(version);
    let count = v / 7 + 2;
    let step = (v * 8 + count * 3 + 5) / (count * 4 - 4) * 2;
    let mut positions = vec![6];
    let last = 4 * v + 17 - 7;
    positions.extend((0..count - 1).rev().map(|i| last - i * step));
    positions
}

struct Grid {
    size: usize,
    modules: Vec<u8>,
    function: Vec<bool>,
}

impl Grid {
    fn set(&mut self, x: usize, y: usize, dark: bool) {
        let i = y * self.size + x;
        self.modules[i] = u8::from(dark);
        self.function[i] = true;
    }

    /// Function patterns; format and version areas and the dark module reserved as light.
    fn function_patterns(version: u8) -> Grid {
        let size = 4 * usize::from(version) + 17;
        let mut g = Grid {
            size,
            modules: vec![0; size * size],
            function: vec![false; size * size],
        };
        for i in 0..size {
            g.set(6, i, i % 2 == 0);
            g.set(i, 6, i % 2 == 0);
        }
        // Finder patterns with their separators (clipped at the edges).
        for (cx, cy) in [(3, 3), (size - 4, 3), (3, size - 4)] {
            for dy in -4i64..=4 {
                for dx in -4i64..=4 {
                    let (x, y) = (cx as i64 + dx, cy as i64 + dy);
                    if (0..size as i64).contains(&x) && (0..size as i64).contains(&y) {
                        let d = dx.abs().max(dy.abs());
                        g.set(x as usize, y as usize, d != 2 && d != 4);
                    }
                }
            }
        }
        let positions = alignment_positions(version);
        let last = positions.len().saturating_sub(1);
        for (i, &cy) in positions.iter().enumerate() {
            for (j, &cx) in positions.iter().enumerate() {
                if [(0, 0), (0, last), (last, 0)].contains(&(i, j)) {
                    continue; // under a finder pattern
                }
                for dy in -2i64..=2 {
                    for dx in -2i64..=2 {
                        let d = dx.abs().max(dy.abs());
                        g.set((cx as i64 + dx) as usize, (cy as i64 + dy) as usize, d != 1);
                    }
                }
            }
        }
        // Format information areas (both copies) and the dark module: reserved, light.
        for i in (0..9).filter(|&i| i != 6) {
            g.set(8, i, false);
            g.set(i, 8, false);
        }
        for i in 0..8 {
            g.set(size - 1 - i, 8, false);
            g.set(8, size - 1 - i, false);
        }
        if version >= 7 {
            for i in 0..18 {
                let (a, b) = (size - 11 + i % 3, i / 3);
                g.set(a, b, false);
                g.set(b, a, false);
            }
        }
        g
    }

    /// Codeword bits in the two-module columns, right to left, alternately up and down (7.7.3);
    /// remainder bits stay light (and are masked like data).
    fn place_codewords(&mut self, codewords: &[u8]) {
        let size = self.size;
        let total_bits = codewords.len() * 8;
        let mut bit = 0;
        let mut right = size - 1;
        loop {
            if right == 6 {
                right = 5;
            }
            let upward = (right + 1) & 2 == 0;
            for vert in 0..size {
                let y = if upward { size - 1 - vert } else { vert };
                for x in [right, right - 1] {
                    let i = y * size + x;
                    if !self.function[i] && bit < total_bits {
                        self.modules[i] = (codewords[bit >> 3] >> (7 - (bit & 7))) & 1;
                        bit += 1;
                    }
                }
            }
            if right < 2 {
                break;
            }
            right -= 2;
        }
        debug_assert_eq!(bit, total_bits);
    }

    fn format_and_version(&mut self, version: u8, mask: u8) {
        let size = self.size;
        let data = (ECL_Q_BITS << 3) | u32::from(mask);
        let mut rem = data;
        for _ in 0..10 {
            rem = (rem << 1) ^ ((rem >> 9) * 0x537);
        }
        let bits = ((data << 10) | rem) ^ 0x5412;
        let bit = |i: usize| (bits >> i) & 1 != 0;
        for i in 0..=5 {
            self.set(8, i, bit(i));
        }
        self.set(8, 7, bit(6));
        self.set(8, 8, bit(7));
        self.set(7, 8, bit(8));
        for i in 9..15 {
            self.set(14 - i, 8, bit(i));
        }
        for i in 0..8 {
            self.set(size - 1 - i, 8, bit(i));
        }
        for i in 8..15 {
            self.set(8, size - 15 + i, bit(i));
        }
        self.set(8, size - 8, true);
        if version >= 7 {
            let v = u32::from(version);
            let mut rem = v;
            for _ in 0..12 {
                rem = (rem << 1) ^ ((rem >> 11) * 0x1F25);
            }
            let bits = (v << 12) | rem;
            for i in 0..18 {
                let dark = (bits >> i) & 1 != 0;
                let (a, b) = (size - 11 + i % 3, i / 3);
                self.set(a, b, dark);
                self.set(b, a, dark);
            }
        }
    }
}

/// Data mask condition (Table 10) at row `i`, column `j`.
const fn mask_bit(mask: u8, i: usize, j: usize) -> bool {
    match mask {
        0 => (i + j) % 2 == 0,
        1 => i % 2 == 0,
        2 => j % 3 == 0,
        3 => (i + j) % 3 == 0,
        4 => (i / 2 + j / 3) % 2 == 0,
        5 => (i * j) % 2 + (i * j) % 3 == 0,
        6 => ((i * j) % 2 + (i * j) % 3) % 2 == 0,
        _ => ((i + j) % 2 + (i * j) % 3) % 2 == 0,
    }
}

fn build(version: u8, codewords: &[u8]) -> QrCode {
    let mut grid = Grid::function_patterns(version);
    grid.place_codewords(codewords);
    let size = grid.size;
    let mask = choose_mask(&grid);
    for y in 0..size {
        let flips = MASK_ROWS[usize::from(mask)][y % MASK_PERIOD];
        for x in 0..size {
            let i = y * size + x;
            if !grid.function[i] && (flips.0[x >> 6] >> (x & 63)) & 1 != 0 {
                grid.modules[i] ^= 1;
            }
        }
    }
    grid.format_and_version(version, mask);
    QrCode {
        version,
        mask,
        size,
        modules: grid.modules,
    }
}

// ---- mask evaluation (7.8.3.1) -----------------------------------------------------------
//
// Each row and column is a bit set (bit i = module i; 177 modules fit in three words), so a
// mask is applied with one XOR per line and the penalties are counted with shifts, ANDs and
// popcounts. The tests hold this to a plain module-by-module evaluation.

const WORDS: usize = 3;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Line([u64; WORDS]);

impl Line {
    /// Bits 0..n set.
    const fn ones(n: usize) -> Line {
        let mut w = [0u64; WORDS];
        let mut i = 0;
        while i < WORDS {
            let lo = i * 64;
            w[i] = if n >= lo + 64 {
                u64::MAX
            } else if n > lo {
                (1u64 << (n - lo)) - 1
            } else {
                0
            };
            i += 1;
        }
        Line(w)
    }

    const fn with(mut self, i: usize) -> Line {
        self.0[i >> 6] |= 1 << (i & 63);
        self
    }

    /// Bit i becomes bit i + k (0 < k < 64); zeros come in at the top.
    fn shr(self, k: u32) -> Line {
        let [a, b, c] = self.0;
        Line([
            (a >> k) | (b << (64 - k)),
            (b >> k) | (c << (64 - k)),
            c >> k,
        ])
    }

    /// Bit i becomes bit i − k (0 < k < 64); zeros come in at the bottom.
    fn shl(self, k: u32) -> Line {
        let [a, b, c] = self.0;
        Line([
            a << k,
            (b << k) | (a >> (64 - k)),
            (c << k) | (b >> (64 - k)),
        ])
    }

    fn count(self) -> u32 {
        self.0.iter().map(|w| w.count_ones()).sum()
    }

    fn is_empty(self) -> bool {
        self.0 == [0; WORDS]
    }

    /// Set bits in ascending order.
    fn ones_iter(self) -> impl Iterator<Item = usize> {
        self.0.into_iter().enumerate().flat_map(|(i, mut w)| {
            std::iter::from_fn(move || {
                (w != 0).then(|| {
                    let bit = w.trailing_zeros() as usize;
                    w &= w - 1;
                    i * 64 + bit
                })
            })
        })
    }
}

impl std::ops::BitAnd for Line {
    type Output = Line;
    fn bitand(self, o: Line) -> Line {
        Line([self.0[0] & o.0[0], self.0[1] & o.0[1], self.0[2] & o.0[2]])
    }
}

impl std::ops::BitOr for Line {
    type Output = Line;
    fn bitor(self, o: Line) -> Line {
        Line([self.0[0] | o.0[0], self.0[1] | o.0[1], self.0[2] | o.0[2]])
    }
}

impl std::ops::BitXor for Line {
    type Output = Line;
    fn bitxor(self, o: Line) -> Line {
        Line([self.0[0] ^ o.0[0], self.0[1] ^ o.0[1], self.0[2] ^ o.0[2]])
    }
}

impl std::ops::Not for Line {
    type Output = Line;
    fn not(self) -> Line {
        Line([!self.0[0], !self.0[1], !self.0[2]])
    }
}

/// Period of every mask along either axis: its condition depends on i and j only modulo 12.
const MASK_PERIOD: usize = 12;

/// MASK_LINES[m][r] = the modules of a row (or, by the masks' symmetry in use, a column) with
/// index ≡ r (mod 12) that mask m flips, as a bit set over the other coordinate.
/// Row y of mask m: bits x where mask_bit(m, y, x); column x: bits y where mask_bit(m, y, x).
const MASK_ROWS: [[Line; MASK_PERIOD]; 8] = mask_lines(false);
const MASK_COLS: [[Line; MASK_PERIOD]; 8] = mask_lines(true);

const fn mask_lines(columns: bool) -> [[Line; MASK_PERIOD]; 8] {
    let mut out = [[Line([0; WORDS]); MASK_PERIOD]; 8];
    let mut m = 0;
    while m < 8 {
        let mut r = 0;
        while r < MASK_PERIOD {
            let mut line = Line([0; WORDS]);
            let mut k = 0;
            while k < WORDS * 64 {
                let flip = if columns {
                    mask_bit(m as u8, k, r)
                } else {
                    mask_bit(m as u8, r, k)
                };
                if flip {
                    line = line.with(k);
                }
                k += 1;
            }
            out[m][r] = line;
            r += 1;
        }
        m += 1;
    }
    out
}

/// The mask with the lowest penalty (the first on a tie), evaluated before the format and
/// version information are placed (their areas light).
fn choose_mask(grid: &Grid) -> u8 {
    let size = grid.size;
    let mut rows = vec![Line::default(); size];
    let mut cols = vec![Line::default(); size];
    let mut data_rows = vec![Line::default(); size];
    let mut data_cols = vec![Line::default(); size];
    for y in 0..size {
        let (yw, yb) = (y >> 6, 1u64 << (y & 63));
        for x in 0..size {
            let i = y * size + x;
            let (xw, xb) = (x >> 6, 1u64 << (x & 63));
            if grid.modules[i] != 0 {
                rows[y].0[xw] |= xb;
                cols[x].0[yw] |= yb;
            }
            if !grid.function[i] {
                data_rows[y].0[xw] |= xb;
                data_cols[x].0[yw] |= yb;
            }
        }
    }
    let mut masked_rows = vec![Line::default(); size];
    let mut masked_cols = vec![Line::default(); size];
    let mut best = (u32::MAX, 0u8);
    for mask in 0..8u8 {
        let m = usize::from(mask);
        for i in 0..size {
            masked_rows[i] = rows[i] ^ (MASK_ROWS[m][i % MASK_PERIOD] & data_rows[i]);
            masked_cols[i] = cols[i] ^ (MASK_COLS[m][i % MASK_PERIOD] & data_cols[i]);
        }
        let score = penalty(&masked_rows, &masked_cols, size);
        if score < best.0 {
            best = (score, mask);
        }
    }
    best.1
}

/// N1 + N2 + N3 + N4 of a masked symbol given as its rows and its columns.
fn penalty(rows: &[Line], cols: &[Line], size: usize) -> u32 {
    let mut score = 0;
    for &line in rows.iter().chain(cols) {
        score += runs_penalty(line, size) + finder_penalty(line, size);
    }
    // N2: 3 for every 2×2 block of one colour.
    let pairs = Line::ones(size - 1);
    for w in rows.windows(2) {
        let (a, b) = (w[0], w[1]);
        let blocks = !(a ^ b) & !(a ^ a.shr(1)) & !(b ^ b.shr(1)) & pairs;
        score += 3 * blocks.count();
    }
    // N4, in floating point exactly as segno computes it.
    let dark: u32 = rows.iter().map(|r| r.count()).sum();
    let percent = f64::from(dark) / (size * size) as f64;
    score + 10 * ((percent * 100.0 - 50.0).abs() / 5.0) as u32
}

/// N1: each run of five or more same-coloured modules scores 3 + (length − 5), i.e. one point
/// per five-module window inside it plus 2 per run.
fn runs_penalty(x: Line, size: usize) -> u32 {
    let same = !(x ^ x.shr(1)) & Line::ones(size - 1); // module i == module i+1
    let five = same & same.shr(1) & same.shr(2) & same.shr(3); // modules i..i+4 alike
    five.count() + 2 * (five & !five.shl(1)).count()
}

/// N3: 40 for each dark-light-dark×3-light-dark with four light modules before or after it
/// (outside the symbol counts as light). The search resumes after a counted pattern and four
/// modules on after an uncounted one, as segno does.
fn finder_penalty(x: Line, size: usize) -> u32 {
    let light = !x; // also every position past the end
    let found = x
        & light.shr(1)
        & x.shr(2)
        & x.shr(3)
        & x.shr(4)
        & light.shr(5)
        & x.shr(6)
        & Line::ones(size - 6);
    if found.is_empty() {
        return 0;
    }
    let after = light.shr(7) & light.shr(8) & light.shr(9) & light.shr(10);
    let before = (light.shl(1) | Line::ones(1))
        & (light.shl(2) | Line::ones(2))
        & (light.shl(3) | Line::ones(3))
        & (light.shl(4) | Line::ones(4));
    let counted = found & (before | after);
    let mut score = 0;
    let mut from = 0;
    for idx in found.ones_iter() {
        if idx < from {
            continue;
        }
        if counted.0[idx >> 6] & (1 << (idx & 63)) != 0 {
            score += 40;
            from = idx + 7;
        } else {
            from = idx + 4;
        }
    }
    score
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// The penalty module by module, the plain way (what the bit sets must agree with).
    fn reference_penalty(m: &[u8], transposed: &mut [u8], size: usize) -> u32 {
        for y in 0..size {
            for x in 0..size {
                transposed[x * size + y] = m[y * size + x];
            }
        }
        let mut score = 0;
        let mut dark = 0usize;
        for (rows, count_dark) in [(m, true), (&*transposed, false)] {
            for line in rows.chunks_exact(size) {
                score += reference_runs(line) + reference_finder(line);
                if count_dark {
                    dark += line.iter().map(|&b| usize::from(b)).sum::<usize>();
                }
            }
        }
        // N2: every 2×2 block of one colour.
        for y in 1..size {
            let (above, row) = (&m[(y - 1) * size..y * size], &m[y * size..(y + 1) * size]);
            for x in 1..size {
                let c = row[x];
                if c == row[x - 1] && c == above[x] && c == above[x - 1] {
                    score += 3;
                }
            }
        }
        // N4, in floating point exactly as segno computes it.
        let percent = dark as f64 / (size * size) as f64;
        score += 10 * ((percent * 100.0 - 50.0).abs() / 5.0) as u32;
        score
    }

    /// N1: each run of five or more same-coloured modules scores 3 + (length − 5).
    fn reference_runs(line: &[u8]) -> u32 {
        let mut score = 0;
        let mut run = 1;
        for w in line.windows(2) {
            if w[0] == w[1] {
                run += 1;
            } else {
                if run >= 5 {
                    score += run - 2;
                }
                run = 1;
            }
        }
        if run >= 5 {
            score += run - 2;
        }
        score
    }

    /// N3: 40 for each dark-light-dark×3-light-dark with four light modules on either side
    /// (outside the symbol counts as light). The search resumes after a counted pattern and
    /// four modules on after an uncounted one, as segno does.
    fn reference_finder(line: &[u8]) -> u32 {
        let is_pattern = |w: &[u8]| {
            w[0] == 1 && w[1] == 0 && w[2] == 1 && w[3] == 1 && w[4] == 1 && w[5] == 0 && w[6] == 1
        };
        let n = line.len();
        let mut score = 0;
        let mut from = 0;
        while let Some(off) = line
            .get(from..)
            .and_then(|rest| rest.windows(7).position(is_pattern))
        {
            let idx = from + off;
            let before = &line[idx.saturating_sub(4)..idx];
            let after = &line[idx + 7..(idx + 11).min(n)];
            if before.iter().all(|&b| b == 0) || after.iter().all(|&b| b == 0) {
                score += 40;
                from = idx + 7;
            } else {
                from = idx + 4;
            }
        }
        score
    }

    /// segno 1.6.6: segno.make("HELLO WORLD", error="q", mode="alphanumeric", micro=False,
    /// boost_error=False) — an independent encoder's matrix, version 1, mask 1.
    const HELLO_WORLD_1Q: [&str; 21] = [
        "111111100001001111111",
        "100000100100001000001",
        "101110100100101011101",
        "101110101101001011101",
        "101110100111001011101",
        "100000101111001000001",
        "111111101010101111111",
        "000000001101000000000",
        "011000100101101101000",
        "000101011010010111011",
        "011000100011011110010",
        "001110000110000000100",
        "110111111110111011111",
        "000000001000011101111",
        "111111100111010000110",
        "100000100000111000010",
        "101110100111011010101",
        "101110100000000001000",
        "101110101100001000011",
        "100000101110100100001",
        "111111100100001001011",
    ];

    #[test]
    fn hello_world_matches_segno() {
        let code = QrCode::encode("HELLO WORLD").unwrap();
        assert_eq!((code.version(), code.mask()), (1, 1));
        assert_eq!(code.to_strings(), HELLO_WORLD_1Q);
    }

    #[test]
    fn hello_world_codewords() {
        // ISO/IEC 18004 worked example layout for "HELLO WORLD", 1-Q (13 data + 13 ECC).
        let values = alphanumeric_values("HELLO WORLD").unwrap();
        let data = data_codewords(&values, 1);
        assert_eq!(
            data,
            [32, 91, 11, 120, 209, 114, 220, 77, 67, 64, 236, 17, 236]
        );
        let all = add_error_correction(&data, 1);
        assert_eq!(
            &all[13..],
            [168, 72, 22, 82, 217, 54, 156, 0, 46, 15, 180, 122, 16]
        );
    }

    #[test]
    fn tables_agree_with_capacity() {
        // Alphanumeric capacity at Q (Table 7): v1 16, v2 29, v10 221, v40 2420.
        for (v, chars) in [(1u8, 16usize), (2, 29), (10, 221), (40, 2420)] {
            assert!(segment_bits(chars, v) <= data_codeword_count(v) * 8, "v{v}");
            assert!(
                segment_bits(chars + 1, v) > data_codeword_count(v) * 8,
                "v{v}"
            );
        }
        assert_eq!(total_codewords(40), 3706);
        assert_eq!(alignment_positions(32), [6, 34, 60, 86, 112, 138]);
        assert_eq!(alignment_positions(7), [6, 22, 38]);
        assert_eq!(alignment_positions(2), [6, 18]);
    }

    #[test]
    fn version_7_matches_segno() {
        // 120 characters need version 7 at Q (version information present); segno 1.6.6's
        // matrix rows joined by '\n', SHA-256.
        let text: String = (0..120)
            .map(|i| char::from(ALPHANUMERIC[i * 7 % 45]))
            .collect();
        let code = QrCode::encode(&text).unwrap();
        assert_eq!((code.version(), code.mask()), (7, VERSION_7_MASK));
        let digest = Sha256::digest(code.to_strings().join("\n"));
        assert_eq!(hex::encode(digest), VERSION_7_SHA256);
    }
    const VERSION_7_MASK: u8 = 6;
    const VERSION_7_SHA256: &str =
        "2dbea5f5916f004194d24332671a2024dbf3a3eff1f26c3ec41f2ffce97081ad";

    #[test]
    fn refuses_what_it_cannot_encode() {
        assert_eq!(QrCode::encode(""), Err(QrError::Empty));
        assert_eq!(
            QrCode::encode("LIC1:abc"),
            Err(QrError::NotAlphanumeric { index: 5, ch: 'a' })
        );
        assert_eq!(
            QrCode::encode("LIC1:许"),
            Err(QrError::NotAlphanumeric {
                index: 5, ch: '许'
            })
        );
        let max = "A".repeat(MAX_CHARS_Q);
        assert_eq!(QrCode::encode(&max).unwrap().version(), 40);
        assert_eq!(
            QrCode::encode(&format!("{max}A")),
            Err(QrError::TooLong {
                chars: MAX_CHARS_Q + 1
            })
        );
    }

    #[test]
    fn every_version_has_a_consistent_layout() {
        // Data modules = all that is not function pattern, for every version.
        for v in 1..=40u8 {
            let g = Grid::function_patterns(v);
            let free = g.function.iter().filter(|&&f| !f).count();
            assert_eq!(free, raw_data_modules(v), "v{v}");
        }
    }

    fn line_of(modules: &[u8]) -> Line {
        modules
            .iter()
            .enumerate()
            .filter(|(_, &m)| m != 0)
            .fold(Line::default(), |l, (i, _)| l.with(i))
    }

    #[test]
    fn finder_penalty_edges() {
        for line in [
            &[1, 0, 1, 1, 1, 0, 1][..],
            &[1, 1, 1, 1, 1, 0, 1, 1, 1, 0, 1, 1],
            &[1, 1, 1, 1, 1, 0, 1, 1, 1, 0, 1, 0, 0, 0, 0],
            // overlapping patterns at offsets 4 and 6: the second is skipped after a count
            &[0, 0, 0, 0, 1, 0, 1, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1],
            &[
                0, 0, 0, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 0, 0, 0,
            ],
        ] {
            assert_eq!(
                finder_penalty(line_of(line), line.len()),
                reference_finder(line),
                "{line:?}"
            );
        }
        assert_eq!(reference_finder(&[1, 0, 1, 1, 1, 0, 1]), 40);
        assert_eq!(reference_finder(&[1, 1, 1, 1, 1, 0, 1, 1, 1, 0, 1, 1]), 0);
    }

    #[test]
    fn bit_set_penalty_equals_the_plain_one() {
        // Pseudo-random symbols of every size, including the all-dark and all-light extremes.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for v in 1..=40u8 {
            let size = 4 * usize::from(v) + 17;
            for density in [0u64, 1, 2, 3, 4] {
                let modules: Vec<u8> = (0..size * size)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        u8::from(state % 4 < density)
                    })
                    .collect();
                let rows: Vec<Line> = modules.chunks(size).map(line_of).collect();
                let cols: Vec<Line> = (0..size)
                    .map(|x| {
                        let col: Vec<u8> = (0..size).map(|y| modules[y * size + x]).collect();
                        line_of(&col)
                    })
                    .collect();
                let mut scratch = vec![0u8; size * size];
                assert_eq!(
                    penalty(&rows, &cols, size),
                    reference_penalty(&modules, &mut scratch, size),
                    "v{v} density {density}"
                );
            }
        }
    }

    #[test]
    fn mask_tables_match_the_conditions() {
        for m in 0..8u8 {
            for i in 0..40 {
                for j in 0..WORDS * 64 {
                    let row = MASK_ROWS[usize::from(m)][i % MASK_PERIOD];
                    let col = MASK_COLS[usize::from(m)][i % MASK_PERIOD];
                    assert_eq!(row.0[j >> 6] >> (j & 63) & 1 != 0, mask_bit(m, i, j));
                    assert_eq!(col.0[j >> 6] >> (j & 63) & 1 != 0, mask_bit(m, j, i));
                }
            }
        }
    }
}
