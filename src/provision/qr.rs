//! The client's `.conf` as a QR code, the way the WireGuard phone apps import one ("scan
//! from QR code"): in the terminal (Unicode half blocks) or as a PNG or SVG file.

use std::path::Path;

use anyhow::{Context, bail};
use qrcode::render::{svg, unicode};
use qrcode::{Color, EcLevel, QrCode};

/// Pixels per module in a PNG.
const PNG_MODULE: usize = 8;
/// The quiet zone around the code, in modules (the standard asks for 4).
const QUIET: usize = 4;

fn encode(text: &str) -> anyhow::Result<QrCode> {
    // Medium error correction: a phone camera reads it off a screen, and a config with a
    // preshared key still fits.
    QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M)
        .context("the configuration does not fit in a QR code")
}

/// The code in Unicode half blocks, light modules as blocks so that it reads on the usual
/// dark terminal background (and the quiet zone is drawn).
pub fn terminal(text: &str) -> anyhow::Result<String> {
    let code = encode(text)?;
    Ok(code
        .render::<unicode::Dense1x2>()
        .dark_color(unicode::Dense1x2::Light)
        .light_color(unicode::Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

fn extension(path: &Path) -> String {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
}

/// Refuses a QR file name that is not `.png` or `.svg`.
pub fn check_path(path: &Path) -> anyhow::Result<()> {
    match extension(path).as_str() {
        "png" | "svg" => Ok(()),
        _ => bail!(
            "{}: the QR file's name must end in .png or .svg",
            path.display()
        ),
    }
}

/// Writes the code to `path` as PNG or SVG, by the file's extension.
pub fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    check_path(path)?;
    let code = encode(text)?;
    let bytes = match extension(path).as_str() {
        "png" => png_bytes(&code)?,
        "svg" => code
            .render::<svg::Color<'_>>()
            .min_dimensions(256, 256)
            .quiet_zone(true)
            .build()
            .into_bytes(),
        _ => bail!("internal error: unchecked QR file name"),
    };
    // It holds the client's private key: readable by its owner only.
    super::edit::write_private(path, &bytes)
}

/// A greyscale PNG: black modules on white, `PNG_MODULE` pixels each, with the quiet zone.
fn png_bytes(code: &QrCode) -> anyhow::Result<Vec<u8>> {
    let modules = code.width();
    let colors = code.to_colors();
    let side = (modules + 2 * QUIET) * PNG_MODULE;
    let mut pixels = vec![255u8; side * side];
    for (i, c) in colors.iter().enumerate() {
        if *c != Color::Dark {
            continue;
        }
        let (mx, my) = (i % modules + QUIET, i / modules + QUIET);
        for y in my * PNG_MODULE..(my + 1) * PNG_MODULE {
            let row = y * side;
            if let Some(span) = pixels.get_mut(row + mx * PNG_MODULE..row + (mx + 1) * PNG_MODULE) {
                span.fill(0);
            }
        }
    }
    let side32 = u32::try_from(side).context("QR code too large")?;
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, side32, side32);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().context("PNG header")?;
        writer.write_image_data(&pixels).context("PNG data")?;
        writer.finish().context("PNG end")?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_code_has_square_rows_and_a_quiet_zone() {
        let t = terminal("[Interface]\nPrivateKey = x\n").unwrap();
        let rows: Vec<&str> = t.lines().collect();
        let width = rows[0].chars().count();
        assert!(rows.iter().all(|r| r.chars().count() == width));
        // Half blocks: two module rows per text row.
        assert_eq!(rows.len(), width.div_ceil(2));
        // The quiet zone is "light", drawn as full blocks on a dark terminal.
        assert!(rows[0].chars().all(|c| c == '█'), "{}", rows[0]);
    }

    #[test]
    fn png_has_the_expected_size() {
        let code = encode("hello").unwrap();
        let bytes = png_bytes(&code).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let reader = decoder.read_info().unwrap();
        let side = (code.width() + 8) * PNG_MODULE;
        assert_eq!(reader.info().width as usize, side);
    }

    #[test]
    fn svg_and_png_files_are_private_to_their_owner() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("tandem-qr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["c.svg", "c.PNG"] {
            let path = dir.join(name);
            // An existing file (say, world-readable) is replaced, not reused.
            std::fs::write(&path, "old").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            write_file(&path, "[Interface]\n").unwrap();
            let meta = std::fs::metadata(&path).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
            let bytes = std::fs::read(&path).unwrap();
            if name.ends_with("svg") {
                let text = String::from_utf8(bytes).unwrap();
                assert!(text.contains("<svg"), "{text}");
            } else {
                assert_eq!(&bytes[1..4], b"PNG");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn other_extensions_are_refused() {
        let e = write_file(Path::new("/nonexistent/x.jpg"), "a").unwrap_err();
        assert!(e.to_string().contains(".png or .svg"), "{e}");
    }
}
