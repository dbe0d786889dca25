//! Pollutant codes (HJ 212-2017 appendix, water monitoring factors) and the platform's
//! quantities.
//!
//! Each code comes with the unit the standard reports it in, written the way the platform
//! writes units, so a value converts with `quantity.to_canonical(value, code.unit)`. Codes the
//! table does not know are for the hub to dead-letter.

use crate::quantity::Quantity;

/// A pollutant code the platform maps to a quantity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollutantCode {
    /// The code as the standard writes it (`w01001`).
    pub code: &'static str,
    /// The quantity its values are stored as.
    pub quantity: Quantity,
    /// The unit values arrive in, in the platform's notation (accepted by
    /// [`Quantity::to_canonical`]).
    pub unit: &'static str,
    /// The unit as the standard prints it.
    pub standard_unit: &'static str,
    /// What it is, in English.
    pub description: &'static str,
}

const fn code(
    code: &'static str,
    quantity: Quantity,
    unit: &'static str,
    standard_unit: &'static str,
    description: &'static str,
) -> PollutantCode {
    PollutantCode {
        code,
        quantity,
        unit,
        standard_unit,
        description,
    }
}

/// Every code the platform knows.
pub const CODES: &[PollutantCode] = &[
    code("w01001", Quantity::Ph, "1", "无量纲", "pH"),
    code("w01003", Quantity::Turbidity, "NTU", "NTU", "turbidity"),
    code(
        "w01009",
        Quantity::DissolvedOxygen,
        "mg/L",
        "mg/L",
        "dissolved oxygen",
    ),
    code(
        "w01010",
        Quantity::WaterTemperature,
        "Cel",
        "℃",
        "water temperature",
    ),
    code(
        "w01014",
        Quantity::Conductivity,
        "uS/cm",
        "μS/cm",
        "conductivity",
    ),
    code(
        "w01018",
        Quantity::Cod,
        "mg/L",
        "mg/L",
        "chemical oxygen demand (COD)",
    ),
    code(
        "w01019",
        Quantity::PermanganateIndex,
        "mg/L",
        "mg/L",
        "permanganate index (CODMn)",
    ),
    code(
        "w21001",
        Quantity::TotalNitrogen,
        "mg/L",
        "mg/L",
        "total nitrogen",
    ),
    code(
        "w21003",
        Quantity::AmmoniaNitrogen,
        "mg/L",
        "mg/L",
        "ammonia nitrogen (NH3-N)",
    ),
    code(
        "w21011",
        Quantity::TotalPhosphorus,
        "mg/L",
        "mg/L",
        "total phosphorus",
    ),
];

/// The entry for a code. Case is ignored: some loggers write `W01001`.
pub fn lookup(code: &str) -> Option<&'static PollutantCode> {
    CODES.iter().find(|c| c.code.eq_ignore_ascii_case(code))
}

/// The code a quantity is reported under, for encoders.
pub fn for_quantity(quantity: Quantity) -> Option<&'static PollutantCode> {
    CODES.iter().find(|c| c.quantity == quantity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        for (i, c) in CODES.iter().enumerate() {
            assert!(
                c.quantity.conversion(c.unit).is_some(),
                "{}: unit {} not accepted by {}",
                c.code,
                c.unit,
                c.quantity
            );
            assert_eq!(lookup(c.code), Some(c));
            assert_eq!(for_quantity(c.quantity), Some(c));
            assert!(
                CODES[i + 1..]
                    .iter()
                    .all(|o| o.code != c.code && o.quantity != c.quantity)
            );
        }
    }

    #[test]
    fn lookups() {
        assert_eq!(
            lookup("W21003").unwrap().quantity,
            Quantity::AmmoniaNitrogen
        );
        assert_eq!(lookup("w01018").unwrap().quantity, Quantity::Cod);
        assert_eq!(lookup("w01014").unwrap().unit, "uS/cm");
        assert_eq!(lookup("a34004"), None);
        assert_eq!(for_quantity(Quantity::LampPower), None);
    }
}
