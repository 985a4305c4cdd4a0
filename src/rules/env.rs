//! `${VAR}` expansion in rules-file strings.

/// Replaces each `${NAME}` with the variable's value; `$${` stays a literal
/// `${`. Returns the names of unset variables as the error.
pub fn expand(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(text.len());
    let mut missing = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        if let Some(literal) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = literal;
            continue;
        }
        let Some(body) = after.strip_prefix("${") else {
            out.push('$');
            rest = &after[1..];
            continue;
        };
        let Some(end) = body.find('}') else {
            out.push_str(after);
            rest = "";
            break;
        };
        let name = &body[..end];
        match lookup(name) {
            Some(value) => out.push_str(&value),
            None => missing.push(name.to_string()),
        }
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        (name == "USER").then(|| "alice".to_string())
    }

    #[test]
    fn expands_set_variables() {
        assert_eq!(expand("a-${USER}-b", lookup).unwrap(), "a-alice-b");
    }

    #[test]
    fn reports_every_unset_variable() {
        assert_eq!(
            expand("${X}${USER}${Y}", lookup).unwrap_err(),
            vec!["X", "Y"]
        );
    }

    #[test]
    fn keeps_escaped_and_plain_dollars() {
        assert_eq!(expand("$${USER} $5", lookup).unwrap(), "${USER} $5");
    }
}
