//! OASIS Common Alerting Protocol 1.2 documents for alerts (`GET /api/v1/alerts/{id}/cap`).
//!
//! Every published change of an alert is one CAP message, its *revision*: revision 1 is
//! `msgType` `Alert`, later ones `Update`, and the one that clears it `Cancel`; each later
//! message `references` the first and the previous one (`sender,identifier,sent`). The mapping
//! from China's four warning levels is written down in docs/decisions/0011:
//!
//! | level | severity | urgency |
//! | --- | --- | --- |
//! | red (I) | Extreme | Immediate |
//! | orange (II) | Severe | Immediate |
//! | yellow (III) | Moderate | Expected |
//! | blue (IV) | Minor | Expected |
//!
//! A `Cancel` has urgency `Past` and responseType `AllClear`. Certainty is `Observed` (a
//! sensor measured it), `Likely` for rates of rise (a trend). Times are local time at
//! `[hub] utc_offset`, whole seconds, as the schema's pattern requires.

use std::fmt::Write as _;

use protocols::Quantity;
use protocols::messages::AlertState;
use protocols::time::civil_from_days;
use protocols::topic::AlertLevel;

use super::StoredAlert;
use crate::config::UtcOffset;
use crate::registry::Device;

/// The CAP namespace.
pub const CAP_NS: &str = "urn:oasis:names:tc:emergency:cap:1.2";
/// The media type of CAP documents.
pub const CAP_MEDIA_TYPE: &str = "application/cap+xml; charset=utf-8";

/// Who sends the CAP messages, and in which local time.
#[derive(Clone, Debug)]
pub struct CapSettings {
    /// `sender`.
    pub sender: String,
    /// `senderName`.
    pub sender_name: String,
    /// Local time of `sent` and `onset`.
    pub offset: UtcOffset,
}

/// CAP `severity` of a level.
pub fn severity(level: AlertLevel) -> &'static str {
    match level {
        AlertLevel::Red => "Extreme",
        AlertLevel::Orange => "Severe",
        AlertLevel::Yellow => "Moderate",
        AlertLevel::Blue => "Minor",
    }
}

/// CAP `urgency` of a level while the alert is open.
pub fn urgency(level: AlertLevel) -> &'static str {
    match level {
        AlertLevel::Red | AlertLevel::Orange => "Immediate",
        AlertLevel::Yellow | AlertLevel::Blue => "Expected",
    }
}

/// The level's number in China's warning scale (IV lowest).
pub fn roman(level: AlertLevel) -> &'static str {
    match level {
        AlertLevel::Red => "I",
        AlertLevel::Orange => "II",
        AlertLevel::Yellow => "III",
        AlertLevel::Blue => "IV",
    }
}

/// The CAP category of a rule's quantity when the rule names none: water and floods `Env`,
/// weather `Met`, manhole covers `Safety`, motion in watched areas `Security`, the rest (lamps,
/// cameras, silence) `Infra`.
pub fn default_category(quantity: Option<Quantity>) -> &'static str {
    use Quantity::*;
    match quantity {
        Some(
            WaterLevel | WaterFlow | Rainfall | Turbidity | Ph | DissolvedOxygen | Conductivity
            | WaterTemperature | AmmoniaNitrogen | Cod | PermanganateIndex | TotalPhosphorus
            | TotalNitrogen | WaterPressure,
        ) => "Env",
        Some(AirTemperature | RelativeHumidity | WindSpeed | AirPressure) => "Met",
        Some(CoverOpen | TiltAngle) => "Safety",
        Some(Motion) => "Security",
        _ => "Infra",
    }
}

/// `2026-11-22T16:00:00+08:00`.
pub fn cap_time(ms: i64, offset: UtcOffset) -> String {
    let local = ms.div_euclid(1000) + i64::from(offset.minutes) * 60;
    let days = local.div_euclid(86_400);
    let secs = local.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{offset}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Escapes text for XML content.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Characters XML 1.0 cannot carry at all.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn identifier(a: &StoredAlert, revision: u32) -> String {
    format!("{}-r{revision}", a.doc.alert.id)
}

/// The CAP message of the alert's current revision.
pub fn render(a: &StoredAlert, device: &Device, s: &CapSettings) -> String {
    let al = &a.doc.alert;
    let revision = a.doc.revision.max(1);
    let sent_ms = if a.rev_sent_ms > 0 {
        a.rev_sent_ms
    } else {
        a.raised_ms
    };
    let cleared = al.state == AlertState::Cleared;
    let msg_type = if cleared {
        "Cancel"
    } else if revision == 1 {
        "Alert"
    } else {
        "Update"
    };
    let mut x = String::with_capacity(2048);
    x.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(x, "<alert xmlns=\"{CAP_NS}\">");
    let el = |x: &mut String, indent: &str, name: &str, text: &str| {
        let _ = writeln!(x, "{indent}<{name}>{}</{name}>", escape(text));
    };
    el(&mut x, "  ", "identifier", &identifier(a, revision));
    el(&mut x, "  ", "sender", &s.sender);
    el(&mut x, "  ", "sent", &cap_time(sent_ms, s.offset));
    el(&mut x, "  ", "status", "Actual");
    el(&mut x, "  ", "msgType", msg_type);
    el(&mut x, "  ", "source", &format!("rule {}", al.rule));
    el(&mut x, "  ", "scope", "Restricted");
    el(
        &mut x,
        "  ",
        "restriction",
        "operators and apps of the district gateway with a grant for this device's alerts",
    );
    if revision > 1 {
        let mut refs = Vec::new();
        let first = a.first_sent_ms.unwrap_or(a.raised_ms);
        refs.push(format!(
            "{},{},{}",
            s.sender,
            identifier(a, 1),
            cap_time(first, s.offset)
        ));
        if revision > 2
            && let Some(prev) = a.prev_sent_ms
        {
            refs.push(format!(
                "{},{},{}",
                s.sender,
                identifier(a, revision - 1),
                cap_time(prev, s.offset)
            ));
        }
        el(&mut x, "  ", "references", &refs.join(" "));
    }
    x.push_str("  <info>\n");
    let i = "    ";
    el(&mut x, i, "language", "en-US");
    el(&mut x, i, "category", &a.category);
    el(&mut x, i, "event", &a.event);
    el(
        &mut x,
        i,
        "responseType",
        if cleared { "AllClear" } else { "Monitor" },
    );
    el(
        &mut x,
        i,
        "urgency",
        if cleared { "Past" } else { urgency(al.level) },
    );
    el(&mut x, i, "severity", severity(al.level));
    el(&mut x, i, "certainty", &a.certainty);
    el(&mut x, i, "onset", &cap_time(a.raised_ms, s.offset));
    el(&mut x, i, "senderName", &s.sender_name);
    let headline: String = if cleared {
        format!("All clear: {}", al.message)
    } else {
        format!(
            "{} warning (level {}): {}",
            capitalized(al.level.name()),
            roman(al.level),
            al.message
        )
    };
    // CAP asks for headlines under 160 characters (text messages).
    el(
        &mut x,
        i,
        "headline",
        &headline.chars().take(160).collect::<String>(),
    );
    let mut description = format!(
        "{}. Device {} ({}{}). Raised {}, state {}.",
        al.message,
        al.device,
        al.kind,
        a.doc
            .dept
            .as_deref()
            .map(|d| format!(", department {d}"))
            .unwrap_or_default(),
        cap_time(a.raised_ms, s.offset),
        state_name(al.state),
    );
    if let Some(by) = &a.doc.acked_by {
        let _ = write!(description, " Acknowledged by {by}.");
    }
    if let Some(sup) = &a.doc.superseded_by {
        let _ = write!(description, " Superseded by the higher-level alert {sup}.");
    }
    el(&mut x, i, "description", &description);
    let mut param = |name: &str, value: &str| {
        let _ = writeln!(
            x,
            "{i}<parameter>\n{i}  <valueName>{}</valueName>\n{i}  <value>{}</value>\n{i}</parameter>",
            escape(name),
            escape(value)
        );
    };
    param("alertId", &al.id);
    param("rule", &al.rule);
    param("device", &al.device);
    param("deviceKind", &al.kind);
    if let Some(q) = &al.quantity {
        param("quantity", q);
    }
    let unit = |v: f64| {
        let t = crate::rules::number_text(v);
        if a.doc.unit.is_empty() {
            t
        } else {
            format!("{t} {}", a.doc.unit)
        }
    };
    if let Some(v) = al.value {
        param("value", &unit(v));
    }
    if let Some(t) = al.threshold {
        param("threshold", &unit(t));
    }
    param(
        "warningLevel",
        &format!("{} ({})", al.level.name(), roman(al.level)),
    );
    param("state", state_name(al.state));
    x.push_str("    <area>\n");
    let desc = match &device.config.name {
        Some(n) => format!("{n} ({}, device {})", device.kind, device.id),
        None => format!("around {} {}", device.kind, device.id),
    };
    el(&mut x, "      ", "areaDesc", &desc);
    if let Some(loc) = device.location {
        el(
            &mut x,
            "      ",
            "circle",
            &format!("{},{} {}", loc.lat, loc.lon, a.radius_km),
        );
    }
    x.push_str("    </area>\n");
    x.push_str("  </info>\n</alert>\n");
    x
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn state_name(s: AlertState) -> &'static str {
    match s {
        AlertState::Active => "active",
        AlertState::Acknowledged => "acknowledged",
        AlertState::Cleared => "cleared",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_carry_the_offset() {
        let off = UtcOffset { minutes: 480 };
        assert_eq!(
            cap_time(1_795_334_400_000, off),
            "2026-11-22T16:00:00+08:00"
        );
        assert_eq!(
            cap_time(1_795_334_400_999, UtcOffset { minutes: -330 }),
            "2026-11-22T02:30:00-05:30"
        );
        assert_eq!(escape("a<b & \"c\"\u{1}"), "a&lt;b &amp; &quot;c&quot; ");
    }
}
