//! IANA time zone names, checked against an embedded list instead of a time
//! zone database crate: the profile only needs "is this a real zone name",
//! and the list costs 9 KB where a full database costs hundreds. The agent
//! stamps device events in UTC, so it never needs the zone rules themselves.

const NAMES: &str = include_str!("tz_names.txt");

fn names() -> impl Iterator<Item = &'static str> {
    NAMES
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// Whether `name` is an IANA zone or link name (case-sensitive, as in tzdata).
pub fn is_known(name: &str) -> bool {
    names().any(|n| n == name)
}

/// The known name closest to `name` (a typo or the wrong case), if any.
pub fn suggest(name: &str) -> Option<&'static str> {
    if let Some(exact_ci) = names().find(|n| n.eq_ignore_ascii_case(name)) {
        return Some(exact_ci);
    }
    crate::spans::closest(name, names())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_zones_and_links_are_known() {
        for ok in [
            "Europe/Dublin",
            "America/New_York",
            "UTC",
            "Etc/UTC",
            "Asia/Tokyo",
            "US/Eastern",
        ] {
            assert!(is_known(ok), "{ok}");
        }
        for bad in [
            "Europe/Dubln",
            "europe/dublin",
            "",
            "Mars/Olympus",
            "Factory",
            "#",
        ] {
            assert!(!is_known(bad), "{bad}");
        }
    }

    #[test]
    fn typos_get_a_suggestion() {
        assert_eq!(suggest("Europe/Dubln"), Some("Europe/Dublin"));
        assert_eq!(suggest("europe/dublin"), Some("Europe/Dublin"));
        assert_eq!(suggest("Nowhere/Special"), None);
    }
}
