//! Reference lists for bill imports.
//!
//! - [`FOCUS_COLUMNS`]: the column IDs of the FOCUS (FinOps Open Cost and Usage
//!   Specification) Cost and Usage dataset, releases 1.2 and 1.3. Columns new in 1.3 are
//!   marked `// 1.3`. The 1.2 names `ProviderName` and `PublisherName`, deprecated in 1.3
//!   (replaced by `ServiceProviderName` and `HostProviderName`), are kept so 1.2 files still
//!   match. Custom `x_` columns are not part of the specification and are not listed.
//! - [`CURRENCIES`]: the active ISO 4217 alphabetic currency codes (as of amendment 180,
//!   effective 2026-01-01), plus the ones withdrawn since 2023 (`ANG`, `BGN`, `CUC`, `HRK`,
//!   `SLL`, `ZWL`) so that older bills still import. Fund codes (such as `CLF`, `UYI`, `USN`), precious metals and the
//!   other `X` codes (`XAU`, `XDR`, `XTS`, `XXX`, ...) are left out; the `X` codes that are
//!   real currencies (`XAF`, `XCD`, `XCG`, `XOF`, `XPF`) are kept.
//! - [`minor_units`]: the ISO 4217 minor unit (decimal places) of a currency.
//!
//! Both lists are sorted byte-wise, so they can be searched with `binary_search`.

/// FOCUS Cost and Usage column IDs of releases 1.2 and 1.3, sorted.
pub const FOCUS_COLUMNS: &[&str] = &[
    "AllocatedMethodDetails", // 1.3
    "AllocatedMethodId",      // 1.3
    "AllocatedResourceId",    // 1.3
    "AllocatedResourceName",  // 1.3
    "AllocatedTags",          // 1.3
    "AvailabilityZone",
    "BilledCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingAccountType",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "CapacityReservationId",
    "CapacityReservationStatus",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargeFrequency",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "CommitmentDiscountCategory",
    "CommitmentDiscountId",
    "CommitmentDiscountName",
    "CommitmentDiscountQuantity",
    "CommitmentDiscountStatus",
    "CommitmentDiscountType",
    "CommitmentDiscountUnit",
    "ConsumedQuantity",
    "ConsumedUnit",
    "ContractApplied", // 1.3
    "ContractedCost",
    "ContractedUnitPrice",
    "EffectiveCost",
    "HostProviderName", // 1.3
    "InvoiceId",
    "InvoiceIssuerName",
    "ListCost",
    "ListUnitPrice",
    "PricingCategory",
    "PricingCurrency",
    "PricingCurrencyContractedUnitPrice",
    "PricingCurrencyEffectiveCost",
    "PricingCurrencyListUnitPrice",
    "PricingQuantity",
    "PricingUnit",
    "ProviderName",
    "PublisherName",
    "RegionId",
    "RegionName",
    "ResourceId",
    "ResourceName",
    "ResourceType",
    "ServiceCategory",
    "ServiceName",
    "ServiceProviderName", // 1.3
    "ServiceSubcategory",
    "SkuId",
    "SkuMeter",
    "SkuPriceDetails",
    "SkuPriceId",
    "SubAccountId",
    "SubAccountName",
    "SubAccountType",
    "Tags",
];

/// Active ISO 4217 alphabetic currency codes, sorted.
pub const CURRENCIES: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD",
    "CDF", "CHF", "CLP", "CNY", "COP", "CRC", "CUC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP",
    "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF",
    "GTQ", "GYD", "HKD", "HNL", "HRK", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK",
    "JMD", "JOD", "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK",
    "LBP", "LKR", "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU",
    "MUR", "MVR", "MWK", "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR",
    "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB", "RWF", "SAR",
    "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SLL", "SOS", "SRD", "SSP", "STN", "SVC",
    "SYP", "SZL", "THB", "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX",
    "USD", "UYU", "UZS", "VED", "VES", "VND", "VUV", "WST", "XAF", "XCD", "XCG", "XOF", "XPF",
    "YER", "ZAR", "ZMW", "ZWG", "ZWL",
];

/// The number of decimal places of the currency's minor unit, per ISO 4217.
///
/// Unknown codes get the common value, 2.
#[must_use]
pub fn minor_units(code: &str) -> u32 {
    match code {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        "CLF" | "UYW" => 4,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_strictly_sorted(list: &[&str]) {
        for pair in list.windows(2) {
            assert!(pair[0] < pair[1], "not sorted or duplicated: {pair:?}");
        }
    }

    #[test]
    fn focus_columns_are_sorted_and_unique() {
        assert_strictly_sorted(FOCUS_COLUMNS);
    }

    #[test]
    fn currencies_are_sorted_and_unique() {
        assert_strictly_sorted(CURRENCIES);
    }

    #[test]
    fn focus_columns_contain_core_columns() {
        for column in [
            "BilledCost",
            "EffectiveCost",
            "BillingCurrency",
            "BillingPeriodStart",
            "ChargePeriodStart",
            "ChargePeriodEnd",
            "ChargeCategory",
            "ServiceName",
            "ServiceCategory",
            "ResourceId",
            "RegionId",
            "SubAccountId",
            "Tags",
            "AllocatedMethodId",
            "AllocatedResourceId",
            "AllocatedTags",
        ] {
            assert!(
                FOCUS_COLUMNS.binary_search(&column).is_ok(),
                "missing {column}"
            );
        }
    }

    #[test]
    fn focus_columns_are_pascal_case_without_custom_columns() {
        for column in FOCUS_COLUMNS {
            assert!(!column.starts_with("x_"), "custom column {column}");
            assert!(
                column.starts_with(|c: char| c.is_ascii_uppercase()),
                "{column}"
            );
            assert!(
                column.chars().all(|c| c.is_ascii_alphanumeric()),
                "{column}"
            );
        }
    }

    #[test]
    fn currencies_contain_common_codes() {
        for code in ["CNY", "USD", "EUR", "JPY"] {
            assert!(CURRENCIES.binary_search(&code).is_ok(), "missing {code}");
        }
    }

    #[test]
    fn currencies_are_three_uppercase_letters() {
        for code in CURRENCIES {
            assert!(code.len() == 3, "{code}");
            assert!(code.chars().all(|c| c.is_ascii_uppercase()), "{code}");
        }
    }

    #[test]
    fn minor_units_follow_iso_4217() {
        assert!(minor_units("JPY") == 0);
        assert!(minor_units("KWD") == 3);
        assert!(minor_units("CNY") == 2);
        assert!(minor_units("CLF") == 4);
        assert!(minor_units("USD") == 2);
    }
}
