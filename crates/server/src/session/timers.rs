//! The session's deadlines: token expiry, and the wait helper for a deadline that may not exist.

use std::time::Duration;

use tokio::time::Instant;

/// When a token expiring at `exp` (Unix seconds) must be closed, `lead_ms` early. Saturating
/// math: a token with an absurd `exp` (near `i64::MAX`) gets a deadline centuries away, or
/// `None` where the platform's clock cannot represent it, and never an overflow.
pub(super) fn expiry_deadline(exp: i64, lead_ms: u64, now_ms: i64) -> Option<Instant> {
    let lead_ms = i64::try_from(lead_ms).unwrap_or(i64::MAX);
    let ms_left = exp
        .saturating_mul(1000)
        .saturating_sub(lead_ms)
        .saturating_sub(now_ms);
    let ms_left = u64::try_from(ms_left).unwrap_or(0);
    Instant::now().checked_add(Duration::from_millis(ms_left))
}

pub(super) async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_absurd_exp_never_overflows_and_never_expires() {
        let now_ms = 1_700_000_000_000;
        let year = Duration::from_secs(365 * 24 * 3600);
        for (exp, lead) in [(i64::MAX, 5000), (i64::MAX / 1000, 5000), (i64::MAX, 0)] {
            // Far away (or unrepresentable, then no deadline at all), but no overflow.
            let deadline = expiry_deadline(exp, lead, now_ms);
            assert!(
                deadline.is_none_or(|at| at > Instant::now() + year),
                "{exp} {lead}"
            );
        }
        // A past exp closes at once; a normal one closes `lead` early.
        let before = Instant::now();
        let past = expiry_deadline(i64::MIN, 0, now_ms).unwrap();
        assert!(past >= before && past <= Instant::now());
        let soon = expiry_deadline(now_ms / 1000 + 60, 5000, now_ms).unwrap();
        let left = soon - Instant::now();
        assert!(left <= Duration::from_secs(55) && left > Duration::from_secs(54));
    }
}
