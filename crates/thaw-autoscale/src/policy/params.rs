//! Policy parameters: `KEY=VALUE` pairs checked against each policy's table of keys,
//! defaults and ranges, so a typo is an error rather than a silently ignored setting.

use std::collections::BTreeMap;

use crate::ParamError;

/// One parameter a policy takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParamSpec {
    /// Its key.
    pub key: &'static str,
    /// Its default.
    pub default: f64,
    /// The smallest value allowed.
    pub min: f64,
    /// What it means, with its unit.
    pub doc: &'static str,
}

/// Parameters as given (command line, configuration file), not yet checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params {
    given: BTreeMap<String, f64>,
    shared: bool,
}

impl Params {
    /// No parameters: every policy's defaults.
    #[must_use]
    pub fn new() -> Self {
        Params::default()
    }

    /// Sets `key` to `value`.
    pub fn set(&mut self, key: &str, value: f64) {
        self.given.insert(key.to_owned(), value);
    }

    /// Sets `key` unless it was given already.
    pub fn set_default(&mut self, key: &str, value: f64) {
        self.given.entry(key.to_owned()).or_insert(value);
    }

    /// Parses and sets one `KEY=VALUE` argument.
    pub fn parse_pair(&mut self, pair: &str) -> Result<(), ParamError> {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| ParamError::NotKeyValue(pair.to_owned()))?;
        let value: f64 = value.trim().parse().map_err(|_| ParamError::BadValue {
            key: key.to_owned(),
            reason: format!("{value:?} is not a number"),
        })?;
        self.set(key.trim(), value);
        Ok(())
    }

    /// Checks the given keys against `specs` and fills in the defaults. Keys that only
    /// some policies take ([`SHARED_KEYS`], given to every policy in a comparison) are
    /// ignored by the others once [`Params::lenient`] was called.
    pub fn resolve(&self, policy: &str, specs: &[ParamSpec]) -> Result<Resolved, ParamError> {
        let mut values = BTreeMap::new();
        for spec in specs {
            values.insert(spec.key, spec.default);
        }
        for (key, &value) in &self.given {
            let Some(spec) = specs.iter().find(|s| s.key == key) else {
                if self.is_shared(key) {
                    continue;
                }
                return Err(ParamError::UnknownKey {
                    policy: policy.to_owned(),
                    key: key.clone(),
                    known: specs.iter().map(|s| s.key).collect::<Vec<_>>().join(", "),
                });
            };
            check_value(spec, value)?;
            values.insert(spec.key, value);
        }
        Ok(Resolved { values })
    }

    fn is_shared(&self, key: &str) -> bool {
        self.shared && SHARED_KEYS.contains(&key)
    }

    /// Marks these parameters as shared by several policies (a comparison): keys in
    /// [`SHARED_KEYS`] that a policy does not take are then skipped instead of refused.
    #[must_use]
    pub fn lenient(mut self) -> Self {
        self.shared = true;
        self
    }
}

/// Keys a comparison may hand to every policy.
pub const SHARED_KEYS: &[&str] = &["target_latency", "min_replicas"];

fn check_value(spec: &ParamSpec, value: f64) -> Result<(), ParamError> {
    if !value.is_finite() {
        return Err(ParamError::BadValue {
            key: spec.key.to_owned(),
            reason: "must be a finite number".into(),
        });
    }
    if value < spec.min {
        return Err(ParamError::BadValue {
            key: spec.key.to_owned(),
            reason: format!("{value} is below its minimum {}", spec.min),
        });
    }
    Ok(())
}

/// Parameters checked against a policy's table, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    values: BTreeMap<&'static str, f64>,
}

impl Resolved {
    /// The value of `key` (0 for a key not in the table, which is a bug in the policy).
    #[must_use]
    pub fn get(&self, key: &str) -> f64 {
        self.values.get(key).copied().unwrap_or(0.0)
    }

    /// The value of `key` as a count (rounded down, saturating).
    #[must_use]
    pub fn count(&self, key: &str) -> u32 {
        let v = self.get(key).floor().max(0.0);
        if v >= f64::from(u32::MAX) {
            u32::MAX
        } else {
            // Non-negative and in range: checked above.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let n = v as u32;
            n
        }
    }

    /// The value of `key` as a switch (non-zero is on).
    #[must_use]
    pub fn flag(&self, key: &str) -> bool {
        self.get(key) != 0.0
    }
}
