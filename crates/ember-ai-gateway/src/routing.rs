//! Dynamic routes: a gateway's named graphs that pick the provider and model for a request that
//! names `dynamic/<route>`. A graph is read from the elements a client sends (start, conditional,
//! percentage, rate, model, end), checked once (one start, every output names an element, no
//! cycles, at most 100% split), and walked per request by the caller, which sends the model
//! elements' requests; the conditions and splits are decided here.

use crate::AiGatewayError;
use ember_store::RateTechnique;
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};

/// One element of a route.
#[derive(Debug, Clone, PartialEq)]
pub enum Element {
    Start {
        next: String,
    },
    /// If/else on the request (`conditions`, MongoDB-like).
    Conditional {
        conditions: Value,
        then: String,
        otherwise: String,
    },
    /// Chance per branch (fractions of 1), the rest to `otherwise` (or nowhere: the route ends).
    Percentage {
        branches: Vec<(f64, String)>,
        otherwise: Option<String>,
    },
    /// At most `limit` per `interval_secs` for each value of `key` (a request field, e.g.
    /// `metadata.user_id`); over it, to `fallback` (or the route ends with a 429).
    Rate {
        key: String,
        limit: Limit,
        interval_secs: u32,
        technique: RateTechnique,
        success: String,
        fallback: Option<String>,
    },
    /// Sends the request to `provider`'s `model`; a failure (after `retries` more tries, or
    /// past `timeout_ms`) goes on to `fallback`, else the route ends with the failure.
    Model {
        provider: String,
        model: String,
        timeout_ms: Option<u64>,
        retries: u8,
        fallback: Option<String>,
    },
    End,
}

/// What a rate element counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    Requests(u32),
    /// Dollars spent (the logs' `cost`) by the requests that passed.
    Dollars(f64),
}

/// A checked route graph.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteGraph {
    elements: HashMap<String, Element>,
    start: String,
}

/// Percentage outputs a split may have, besides `else`.
const MAX_SPLITS: usize = 5;
/// Retries a model element may ask for.
const MAX_RETRIES: u64 = 5;

fn invalid(field: &str, message: impl Into<String>) -> AiGatewayError {
    AiGatewayError::invalid(field, message)
}

impl RouteGraph {
    /// Reads and checks `elements`, naming each problem by its JSON pointer.
    pub fn parse(elements: &Value) -> Result<RouteGraph, AiGatewayError> {
        let Some(list) = elements.as_array().filter(|list| !list.is_empty()) else {
            return Err(invalid(
                "/elements",
                "must be a non-empty array of elements",
            ));
        };
        let mut graph = RouteGraph {
            elements: HashMap::new(),
            start: String::new(),
        };
        for (index, element) in list.iter().enumerate() {
            let at = format!("/elements/{index}");
            let id = element
                .get("id")
                .and_then(Value::as_str)
                .filter(|id| !id.is_empty())
                .ok_or_else(|| invalid(&format!("{at}/id"), "must be a non-empty string"))?;
            let parsed = parse_element(&at, element)?;
            if matches!(parsed, Element::Start { .. }) {
                if !graph.start.is_empty() {
                    return Err(invalid(&format!("{at}/type"), "a route has one start"));
                }
                graph.start = id.to_string();
            }
            if graph.elements.insert(id.to_string(), parsed).is_some() {
                return Err(invalid(
                    &format!("{at}/id"),
                    format!("'{id}' is used twice"),
                ));
            }
        }
        if graph.start.is_empty() {
            return Err(invalid("/elements", "a route needs a start element"));
        }
        graph.check_links()?;
        Ok(graph)
    }

    pub fn start(&self) -> &str {
        &self.start
    }

    pub fn element(&self, id: &str) -> Option<&Element> {
        self.elements.get(id)
    }

    fn outputs(element: &Element) -> Vec<&String> {
        match element {
            Element::Start { next } => vec![next],
            Element::Conditional {
                then, otherwise, ..
            } => vec![then, otherwise],
            Element::Percentage {
                branches,
                otherwise,
            } => branches
                .iter()
                .map(|(_, id)| id)
                .chain(otherwise.iter())
                .collect(),
            Element::Rate {
                success, fallback, ..
            } => std::iter::once(success).chain(fallback.iter()).collect(),
            Element::Model { fallback, .. } => fallback.iter().collect(),
            Element::End => Vec::new(),
        }
    }

    /// Every output names an element, and no path comes back to where it was.
    fn check_links(&self) -> Result<(), AiGatewayError> {
        for (id, element) in &self.elements {
            if let Some(missing) = Self::outputs(element)
                .into_iter()
                .find(|next| !self.elements.contains_key(*next))
            {
                return Err(invalid(
                    "/elements",
                    format!("element '{id}' leads to '{missing}', which is not in the route"),
                ));
            }
        }
        let mut done = HashSet::new();
        let mut path = Vec::new();
        self.acyclic(&self.start, &mut path, &mut done)
    }

    fn acyclic<'a>(
        &'a self,
        id: &'a str,
        path: &mut Vec<&'a str>,
        done: &mut HashSet<&'a str>,
    ) -> Result<(), AiGatewayError> {
        if path.contains(&id) {
            return Err(invalid(
                "/elements",
                format!("the route loops back to '{id}'"),
            ));
        }
        if !done.insert(id) {
            return Ok(());
        }
        path.push(id);
        for next in Self::outputs(&self.elements[id]) {
            self.acyclic(next, path, done)?;
        }
        path.pop();
        Ok(())
    }
}

fn output(at: &str, element: &Value, name: &str) -> Result<Option<String>, AiGatewayError> {
    match element.get("outputs").and_then(|o| o.get(name)) {
        None | Some(Value::Null) => Ok(None),
        Some(target) => target
            .get("elementId")
            .and_then(Value::as_str)
            .map(|id| Some(id.to_string()))
            .ok_or_else(|| {
                invalid(
                    &format!("{at}/outputs/{name}"),
                    "must be {\"elementId\": \"<id>\"}",
                )
            }),
    }
}

fn required(at: &str, element: &Value, name: &str) -> Result<String, AiGatewayError> {
    output(at, element, name)?
        .ok_or_else(|| invalid(&format!("{at}/outputs/{name}"), "is required"))
}

fn parse_element(at: &str, element: &Value) -> Result<Element, AiGatewayError> {
    let properties = element.get("properties").cloned().unwrap_or(Value::Null);
    let property = |name: &str| properties.get(name).filter(|v| !v.is_null());
    let text = |name: &str| {
        property(name)
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .ok_or_else(|| invalid(&format!("{at}/properties/{name}"), "must be a string"))
    };
    let count = |name: &str, most: u64| {
        property(name)
            .and_then(Value::as_u64)
            .filter(|n| (1..=most).contains(n))
            .ok_or_else(|| {
                invalid(
                    &format!("{at}/properties/{name}"),
                    format!("must be a whole number from 1 to {most}"),
                )
            })
    };
    let kind = element.get("type").and_then(Value::as_str).unwrap_or("");
    Ok(match kind {
        "start" => Element::Start {
            next: required(at, element, "next")?,
        },
        "conditional" => {
            // Cloudflare's documents spell it both ways.
            let conditions = property("conditions")
                .or(property("condition"))
                .filter(|c| c.is_object())
                .cloned()
                .ok_or_else(|| {
                    invalid(&format!("{at}/properties/conditions"), "must be an object")
                })?;
            check_conditions(&format!("{at}/properties/conditions"), &conditions)?;
            Element::Conditional {
                conditions,
                then: required(at, element, "true")?,
                otherwise: required(at, element, "false")?,
            }
        }
        "percentage" => {
            let outputs = element.get("outputs").and_then(Value::as_object);
            let mut branches = Vec::new();
            let mut otherwise = None;
            for name in outputs.map(Map::keys).into_iter().flatten() {
                let target = required(at, element, name)?;
                if name == "else" {
                    otherwise = Some(target);
                    continue;
                }
                let share = name
                    .strip_suffix('%')
                    .and_then(|n| n.trim().parse::<f64>().ok())
                    .filter(|n| (0.0..=100.0).contains(n))
                    .ok_or_else(|| {
                        invalid(
                            &format!("{at}/outputs/{name}"),
                            "a split is named by its share, e.g. \"25%\", or \"else\"",
                        )
                    })?;
                branches.push((share / 100.0, target));
            }
            if branches.is_empty() || branches.len() > MAX_SPLITS {
                return Err(invalid(
                    &format!("{at}/outputs"),
                    format!("a split has 1 to {MAX_SPLITS} shares, and maybe \"else\""),
                ));
            }
            if branches.iter().map(|(share, _)| share).sum::<f64>() > 1.0 + 1e-9 {
                return Err(invalid(
                    &format!("{at}/outputs"),
                    "the shares add up to more than 100%",
                ));
            }
            Element::Percentage {
                branches,
                otherwise,
            }
        }
        "rate" => {
            let limit = match property("limitType").and_then(Value::as_str) {
                None | Some("count") => {
                    Limit::Requests(count("limit", u64::from(u32::MAX))? as u32)
                }
                Some("cost") => Limit::Dollars(
                    property("limit")
                        .and_then(Value::as_f64)
                        .filter(|dollars| *dollars > 0.0)
                        .ok_or_else(|| {
                            invalid(
                                &format!("{at}/properties/limit"),
                                "must be a positive amount of dollars",
                            )
                        })?,
                ),
                Some(_) => {
                    return Err(invalid(
                        &format!("{at}/properties/limitType"),
                        "must be count or cost",
                    ));
                }
            };
            let technique = match property("technique").and_then(Value::as_str) {
                None | Some("fixed") => RateTechnique::Fixed,
                Some("sliding") => RateTechnique::Sliding,
                Some(_) => {
                    return Err(invalid(
                        &format!("{at}/properties/technique"),
                        "must be fixed or sliding",
                    ));
                }
            };
            Element::Rate {
                key: text("key")?,
                limit,
                interval_secs: count("interval", 31 * 24 * 3600)? as u32,
                technique,
                success: required(at, element, "success")?,
                fallback: output(at, element, "fallback")?,
            }
        }
        "model" => Element::Model {
            provider: text("provider")?,
            model: text("model")?,
            timeout_ms: property("timeout").and_then(Value::as_u64),
            retries: property("retries")
                .map(|r| {
                    r.as_u64().filter(|n| *n <= MAX_RETRIES).ok_or_else(|| {
                        invalid(
                            &format!("{at}/properties/retries"),
                            format!("must be from 0 to {MAX_RETRIES}"),
                        )
                    })
                })
                .transpose()?
                .unwrap_or(0) as u8,
            fallback: output(at, element, "fallback")?,
        },
        "end" => Element::End,
        other => {
            return Err(invalid(
                &format!("{at}/type"),
                format!(
                    "'{other}' is not an element type: start, conditional, percentage, rate, \
                     model or end"
                ),
            ));
        }
    })
}

/// Field operators a condition may use.
const OPERATORS: [&str; 9] = [
    "$eq", "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte", "$exists",
];

fn check_conditions(at: &str, conditions: &Value) -> Result<(), AiGatewayError> {
    let Some(object) = conditions.as_object() else {
        return Err(invalid(at, "must be an object"));
    };
    for (key, value) in object {
        match key.as_str() {
            "$and" | "$or" | "$nor" => {
                let Some(list) = value.as_array() else {
                    return Err(invalid(&format!("{at}/{key}"), "must be an array"));
                };
                for (index, inner) in list.iter().enumerate() {
                    check_conditions(&format!("{at}/{key}/{index}"), inner)?;
                }
            }
            operator if operator.starts_with('$') => {
                return Err(invalid(
                    &format!("{at}/{operator}"),
                    "is not a condition operator ($and, $or, $nor)",
                ));
            }
            _ => {
                if let Some(op) = value
                    .as_object()
                    .and_then(|ops| ops.keys().find(|op| !OPERATORS.contains(&op.as_str())))
                {
                    return Err(invalid(
                        &format!("{at}/{key}/{op}"),
                        format!("is not a field operator ({})", OPERATORS.join(", ")),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The value at a dotted path (`metadata.plan`, `headers.x-tier`, `body.model`; a path that
/// names none of those is looked up in the body).
pub fn field<'a>(context: &'a Value, path: &str) -> Option<&'a Value> {
    let rooted = ["metadata", "headers", "body"]
        .iter()
        .any(|root| path == *root || path.starts_with(&format!("{root}.")));
    let mut value = if rooted {
        context
    } else {
        context.get("body")?
    };
    for part in path.split('.') {
        value = match value {
            Value::Array(list) => list.get(part.parse::<usize>().ok()?)?,
            other => other.get(part)?,
        };
    }
    Some(value)
}

/// Whether `conditions` hold for the request `context` (`{metadata, headers, body}`).
pub fn holds(conditions: &Value, context: &Value) -> bool {
    let Some(object) = conditions.as_object() else {
        return false;
    };
    object.iter().all(|(key, expected)| {
        let all = || expected.as_array().into_iter().flatten();
        match key.as_str() {
            "$and" => all().all(|inner| holds(inner, context)),
            "$or" => all().any(|inner| holds(inner, context)),
            "$nor" => !all().any(|inner| holds(inner, context)),
            path => {
                let actual = field(context, path);
                match expected.as_object() {
                    Some(ops) if ops.keys().all(|op| op.starts_with('$')) => {
                        ops.iter().all(|(op, operand)| compare(op, actual, operand))
                    }
                    _ => actual == Some(expected),
                }
            }
        }
    })
}

fn compare(op: &str, actual: Option<&Value>, operand: &Value) -> bool {
    let order = || {
        let (a, b) = (actual?.as_f64(), operand.as_f64());
        match (a, b) {
            (Some(a), Some(b)) => a.partial_cmp(&b),
            _ => actual?.as_str()?.partial_cmp(operand.as_str()?),
        }
    };
    let listed = || {
        operand
            .as_array()
            .is_some_and(|list| actual.is_some_and(|a| list.contains(a)))
    };
    match op {
        "$eq" => actual == Some(operand),
        "$ne" => actual != Some(operand),
        "$in" => listed(),
        "$nin" => !listed(),
        "$gt" => order().is_some_and(|o| o.is_gt()),
        "$gte" => order().is_some_and(|o| o.is_ge()),
        "$lt" => order().is_some_and(|o| o.is_lt()),
        "$lte" => order().is_some_and(|o| o.is_le()),
        "$exists" => actual.is_some() == (operand == &Value::Bool(true)),
        _ => false,
    }
}

/// The branch a draw in `[0, 1)` falls in, or `otherwise`.
pub fn split<'a>(
    branches: &'a [(f64, String)],
    otherwise: Option<&'a String>,
    draw: f64,
) -> Option<&'a String> {
    let mut edge = 0.0;
    for (share, target) in branches {
        edge += share;
        if draw < edge {
            return Some(target);
        }
    }
    otherwise
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route() -> Value {
        json!([
            {"id": "s", "type": "start", "outputs": {"next": {"elementId": "plan"}}},
            {"id": "plan", "type": "conditional",
             "properties": {"conditions": {"metadata.plan": {"$eq": "paid"}}},
             "outputs": {"true": {"elementId": "big"}, "false": {"elementId": "split"}}},
            {"id": "split", "type": "percentage",
             "outputs": {"30%": {"elementId": "big"}, "else": {"elementId": "limit"}}},
            {"id": "limit", "type": "rate",
             "properties": {"key": "metadata.user", "limit": 2, "interval": 60, "technique": "sliding"},
             "outputs": {"success": {"elementId": "small"}, "fallback": {"elementId": "end"}}},
            {"id": "big", "type": "model", "properties": {"provider": "workers-ai", "model": "@cf/big", "retries": 1},
             "outputs": {"fallback": {"elementId": "small"}}},
            {"id": "small", "type": "model", "properties": {"provider": "workers-ai", "model": "@cf/small"}},
            {"id": "end", "type": "end"}
        ])
    }

    #[test]
    fn a_route_is_read_and_its_elements_linked() {
        let graph = RouteGraph::parse(&route()).unwrap();
        assert_eq!(graph.start(), "s");
        let Some(Element::Model {
            retries, fallback, ..
        }) = graph.element("big")
        else {
            panic!("big is a model");
        };
        assert_eq!((*retries, fallback.as_deref()), (1, Some("small")));
    }

    #[test]
    fn bad_routes_name_the_element() {
        let with = |index: usize, change: Value| {
            let mut elements = route();
            elements[index] = change;
            RouteGraph::parse(&elements).unwrap_err().to_string()
        };
        let start_twice =
            json!({"id": "x", "type": "start", "outputs": {"next": {"elementId": "end"}}});
        let cases = [
            (
                with(6, json!({"id": "end", "type": "finish"})),
                "/elements/6/type",
            ),
            (with(6, start_twice), "/elements/6/type"),
            (
                with(
                    5,
                    json!({"id": "small", "type": "model", "properties": {"provider": "workers-ai"}}),
                ),
                "/elements/5/properties/model",
            ),
            (
                with(
                    2,
                    json!({"id": "split", "type": "percentage", "outputs": {"60%": {"elementId": "big"}, "50%": {"elementId": "small"}}}),
                ),
                "/elements/2/outputs",
            ),
            (
                with(
                    2,
                    json!({"id": "split", "type": "percentage", "outputs": {"half": {"elementId": "big"}}}),
                ),
                "/elements/2/outputs/half",
            ),
            (
                with(
                    3,
                    json!({"id": "limit", "type": "rate", "properties": {"key": "k", "limit": 1, "interval": 1, "limitType": "tokens"}, "outputs": {"success": {"elementId": "small"}}}),
                ),
                "/elements/3/properties/limitType",
            ),
            (
                with(
                    3,
                    json!({"id": "limit", "type": "rate", "properties": {"key": "k", "limit": -1, "interval": 1, "limitType": "cost"}, "outputs": {"success": {"elementId": "small"}}}),
                ),
                "/elements/3/properties/limit",
            ),
            (
                with(
                    1,
                    json!({"id": "plan", "type": "conditional", "properties": {"conditions": {"a": {"$regex": "x"}}}, "outputs": {"true": {"elementId": "big"}, "false": {"elementId": "big"}}}),
                ),
                "/elements/1/properties/conditions/a/$regex",
            ),
            (
                with(
                    4,
                    json!({"id": "big", "type": "model", "properties": {"provider": "p", "model": "m"}, "outputs": {"fallback": {"elementId": "nowhere"}}}),
                ),
                "nowhere",
            ),
            (
                with(
                    5,
                    json!({"id": "small", "type": "model", "properties": {"provider": "p", "model": "m"}, "outputs": {"fallback": {"elementId": "big"}}}),
                ),
                "loops back",
            ),
        ];
        for (message, expected) in cases {
            assert!(message.contains(expected), "{message} lacks {expected}");
        }
        assert!(RouteGraph::parse(&json!([])).is_err());
        assert!(
            RouteGraph::parse(&json!([{"id": "e", "type": "end"}]))
                .unwrap_err()
                .to_string()
                .contains("start")
        );
    }

    #[test]
    fn conditions_read_metadata_headers_and_body() {
        let context = json!({
            "metadata": {"plan": "paid", "user": 12, "beta": true},
            "headers": {"x-tier": "gold"},
            "body": {"model": "dynamic/support", "max_tokens": 100, "messages": [{"role": "user"}]},
        });
        let cases = [
            (json!({"metadata.plan": "paid"}), true),
            (json!({"metadata.plan": {"$ne": "paid"}}), false),
            (json!({"metadata.user": {"$gte": 12, "$lt": 13}}), true),
            (json!({"headers.x-tier": {"$in": ["gold", "silver"]}}), true),
            (json!({"max_tokens": {"$gt": 500}}), false),
            (json!({"messages.0.role": "user"}), true),
            (json!({"metadata.team": {"$exists": false}}), true),
            (
                json!({"$or": [{"metadata.plan": "free"}, {"metadata.beta": true}]}),
                true,
            ),
            (
                json!({"$and": [{"metadata.plan": "paid"}, {"body.model": {"$nin": ["x"]}}]}),
                true,
            ),
            (json!({"$nor": [{"metadata.plan": "paid"}]}), false),
        ];
        for (conditions, expected) in cases {
            assert_eq!(holds(&conditions, &context), expected, "{conditions}");
        }
    }

    #[test]
    fn a_split_follows_its_shares() {
        let branches = vec![(0.1, "a".to_string()), (0.5, "b".to_string())];
        let rest = "c".to_string();
        let pick = |draw| split(&branches, Some(&rest), draw).map(String::as_str);
        assert_eq!(
            [pick(0.05), pick(0.3), pick(0.7)],
            [Some("a"), Some("b"), Some("c")]
        );
        assert_eq!(split(&branches, None, 0.99), None);
    }
}
