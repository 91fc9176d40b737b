//! A certificate's notAfter, read straight from its DER, and Unix time to and from calendar
//! dates. Only what the expiry metric and the reload log line need, so no X.509 parser (and its
//! dependency tree) comes in for one field; rustls has already parsed and checked the rest.

/// The leaf certificate's notAfter as Unix seconds, or `None` when the DER is not shaped like a
/// certificate (RFC 5280 §4.1).
pub fn not_after(cert_der: &[u8]) -> Option<i64> {
    let (cert, _) = element(cert_der, SEQUENCE)?;
    let (tbs, _) = element(cert, SEQUENCE)?;
    let mut rest = tbs;
    // version [0] EXPLICIT is optional (absent means v1).
    if rest.first() == Some(&VERSION) {
        rest = element(rest, VERSION)?.1;
    }
    for tag in [INTEGER, SEQUENCE, SEQUENCE] {
        // serialNumber, signature AlgorithmIdentifier, issuer Name
        rest = element(rest, tag)?.1;
    }
    let (validity, _) = element(rest, SEQUENCE)?;
    let (_, _, after_not_before) = any_element(validity)?;
    let (tag, value, _) = any_element(after_not_before)?;
    match tag {
        UTC_TIME => parse_utc_time(value),
        GENERALIZED_TIME => parse_generalized_time(value),
        _ => None,
    }
}

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const VERSION: u8 = 0xa0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// Splits one DER element with the expected tag off `input`: (its value, what follows).
fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (found, value, rest) = any_element(input)?;
    (found == tag).then_some((value, rest))
}

/// Splits one DER element off `input`: (tag, value, what follows). Single-byte tags only,
/// which is all a certificate's outer structure uses.
fn any_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, after) = rest.split_at(count);
        rest = after;
        bytes.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b))
    };
    if rest.len() < len {
        return None;
    }
    let (value, after) = rest.split_at(len);
    Some((tag, value, after))
}

/// `YYMMDDHHMMSSZ`; years 50–99 are 19xx (RFC 5280 §4.1.2.5.1).
fn parse_utc_time(v: &[u8]) -> Option<i64> {
    if v.len() != 13 || v[12] != b'Z' {
        return None;
    }
    let yy = digits(&v[0..2])?;
    let year = if yy >= 50 { 1900 + yy } else { 2000 + yy };
    from_parts(year, &v[2..12])
}

/// `YYYYMMDDHHMMSSZ` (RFC 5280 §4.1.2.5.2).
fn parse_generalized_time(v: &[u8]) -> Option<i64> {
    if v.len() != 15 || v[14] != b'Z' {
        return None;
    }
    from_parts(digits(&v[0..4])?, &v[4..14])
}

/// `MMDDHHMMSS` after the year.
fn from_parts(year: i64, v: &[u8]) -> Option<i64> {
    let month = digits(&v[0..2])?;
    let day = digits(&v[2..4])?;
    let (h, m, s) = (digits(&v[4..6])?, digits(&v[6..8])?, digits(&v[8..10])?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s)
}

fn digits(v: &[u8]) -> Option<i64> {
    v.iter().try_fold(0i64, |n, b| {
        b.is_ascii_digit().then(|| n * 10 + i64::from(b - b'0'))
    })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`, for log lines.
pub fn format_utc(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rcgen::{date_time_ymd, CertificateParams, KeyPair};

    fn cert_expiring(year: i32, month: u8, day: u8) -> Vec<u8> {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_after = date_time_ymd(year, month, day);
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_a_utc_time_not_after() {
        // 2031-03-04T00:00:00Z, from `date -u -d 2031-03-04 +%s`.
        assert_eq!(not_after(&cert_expiring(2031, 3, 4)), Some(1_930_348_800));
    }

    #[test]
    fn reads_a_generalized_time_not_after_from_2050_on() {
        // 2051-01-01T00:00:00Z: RFC 5280 switches to GeneralizedTime in 2050.
        assert_eq!(not_after(&cert_expiring(2051, 1, 1)), Some(2_556_144_000));
    }

    #[test]
    fn anything_but_a_certificate_has_no_not_after() {
        let der = cert_expiring(2031, 3, 4);
        for cut in [0, 1, 2, 10, 100, der.len() / 2] {
            assert_eq!(not_after(&der[..cut]), None, "cut at {cut}");
        }
        assert_eq!(not_after(b"not DER at all"), None);
    }

    #[test]
    fn formats_dates_back_and_forth() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(1_930_348_800 + 3661), "2031-03-04T01:01:01Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(days_from_civil(2000, 3, 1) * 86_400, 951_868_800);
    }
}
