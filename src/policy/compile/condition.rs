//! Rule conditions: `all` / `any` / `not` over claim tests (`equals`, `one_of`, `matches`,
//! `present`, `contains`, `equals_param`).

use super::ConfigErrors;
use crate::authz::{ClaimTest, Condition};
use crate::policy::raw::RawCondition;

/// `params` are the names in the route's path template (for `equals_param`).
pub(super) fn compile_condition(
    mut rc: RawCondition,
    path: &str,
    params: &[String],
    errors: &mut ConfigErrors,
) -> Option<Condition> {
    if !has_one_shape(&rc) {
        errors.push(
            path,
            "a condition is exactly one of `all`, `any`, `not`, or `claim` with one of `equals`, `one_of`, `matches`, `present`, `contains`, `equals_param`",
        );
        return None;
    }
    let list = |items: Vec<RawCondition>, key: &str, errors: &mut ConfigErrors| {
        let n = items.len();
        let out: Vec<Condition> = items
            .into_iter()
            .enumerate()
            .filter_map(|(i, c)| {
                compile_condition(c, &format!("{path}.{key}[{i}]"), params, errors)
            })
            .collect();
        (out.len() == n).then_some(out)
    };
    if let Some(items) = rc.all.take() {
        return list(items, "all", errors).map(Condition::All);
    }
    if let Some(items) = rc.any.take() {
        return list(items, "any", errors).map(Condition::Any);
    }
    if let Some(inner) = rc.not.take() {
        return compile_condition(*inner, &format!("{path}.not"), params, errors)
            .map(|c| Condition::Not(Box::new(c)));
    }
    let claim = rc.claim.take().unwrap_or_default();
    if claim.is_empty() {
        errors.push(format!("{path}.claim"), "must not be empty");
        return None;
    }
    let test = compile_claim_test(rc, path, params, errors)?;
    Some(Condition::Claim { path: claim, test })
}

/// Exactly one combinator, or a `claim` with exactly one test.
fn has_one_shape(rc: &RawCondition) -> bool {
    let combinators = [rc.all.is_some(), rc.any.is_some(), rc.not.is_some()];
    let tests = [
        rc.equals.is_some(),
        rc.one_of.is_some(),
        rc.matches.is_some(),
        rc.present.is_some(),
        rc.contains.is_some(),
        rc.equals_param.is_some(),
    ];
    let n_comb = combinators.iter().filter(|b| **b).count();
    let n_test = tests.iter().filter(|b| **b).count();
    n_comb + n_test == 1
        && (n_comb == 0 || rc.claim.is_none())
        && (n_test == 0 || rc.claim.is_some())
}

fn compile_claim_test(
    rc: RawCondition,
    path: &str,
    params: &[String],
    errors: &mut ConfigErrors,
) -> Option<ClaimTest> {
    if let Some(v) = rc.equals {
        Some(ClaimTest::Equals(v))
    } else if let Some(vs) = rc.one_of {
        Some(ClaimTest::OneOf(vs))
    } else if let Some(re) = rc.matches {
        match regex::RegexBuilder::new(&re).size_limit(1 << 20).build() {
            Ok(r) => Some(ClaimTest::Matches(r)),
            Err(e) => {
                errors.push(format!("{path}.matches"), format!("invalid regex: {e}"));
                None
            }
        }
    } else if let Some(p) = rc.present {
        Some(ClaimTest::Present(p))
    } else if let Some(v) = rc.contains {
        Some(ClaimTest::Contains(v))
    } else if let Some(name) = rc.equals_param {
        if !params.contains(&name) {
            errors.push(
                format!("{path}.equals_param"),
                format!("the route's path template has no parameter `{name}`"),
            );
            return None;
        }
        Some(ClaimTest::EqualsParam(name))
    } else {
        None
    }
}
