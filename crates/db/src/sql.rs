//! The small SQL interface the rules are written against.
//!
//! [`crate::rules`] holds every artifact rule and every query once, in the
//! SQL both databases understand: numbered parameters `?1`, `?2` … (the
//! PostgreSQL backend writes them `$1`), `ON CONFLICT`, `IS NOT DISTINCT
//! FROM`, `string_agg`, casts to `BIGINT` where PostgreSQL would widen a
//! sum to `NUMERIC`. A backend only moves [`Value`]s in and out and takes
//! the row locks of [`Sql::lock`]; it holds no rule.

use crate::DbError;

/// A parameter or a column value. Booleans are integers (0 or 1), as in
/// SQLite; text columns are compared byte by byte on both databases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// SQL `NULL`.
    Null,
    /// An integer (or a boolean: 0 or 1).
    Int(i64),
    /// Text.
    Text(String),
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.to_string())
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Value {
        Value::Text(v.clone())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map(Into::into).unwrap_or(Value::Null)
    }
}
impl From<&Option<String>> for Value {
    fn from(v: &Option<String>) -> Value {
        v.as_deref().into()
    }
}

/// Parameters of one statement: `args![a, b, c]`.
macro_rules! args {
    ($($v:expr),* $(,)?) => { &[$($crate::sql::Value::from($v)),*][..] };
}
pub(crate) use args;

/// One result row. Accessors take the value out (no copy) and fail with a
/// backend error naming the column when its type is not the one asked.
#[derive(Debug)]
pub struct Row(pub(crate) Vec<Value>);

impl Row {
    fn take(&mut self, i: usize) -> Value {
        self.0
            .get_mut(i)
            .map(|v| std::mem::replace(v, Value::Null))
            .unwrap_or(Value::Null)
    }

    fn wrong(i: usize, want: &str, got: &Value) -> DbError {
        DbError::Backend(format!("column {i}: expected {want}, found {got:?}"))
    }

    /// A non-null text column.
    pub(crate) fn text(&mut self, i: usize) -> Result<String, DbError> {
        match self.take(i) {
            Value::Text(s) => Ok(s),
            other => Err(Row::wrong(i, "text", &other)),
        }
    }

    /// A nullable text column.
    pub(crate) fn opt_text(&mut self, i: usize) -> Result<Option<String>, DbError> {
        match self.take(i) {
            Value::Text(s) => Ok(Some(s)),
            Value::Null => Ok(None),
            other => Err(Row::wrong(i, "text or null", &other)),
        }
    }

    /// A non-null integer column.
    pub(crate) fn int(&mut self, i: usize) -> Result<i64, DbError> {
        match self.take(i) {
            Value::Int(n) => Ok(n),
            other => Err(Row::wrong(i, "integer", &other)),
        }
    }

    /// A nullable integer column.
    pub(crate) fn opt_int(&mut self, i: usize) -> Result<Option<i64>, DbError> {
        match self.take(i) {
            Value::Int(n) => Ok(Some(n)),
            Value::Null => Ok(None),
            other => Err(Row::wrong(i, "integer or null", &other)),
        }
    }

    /// A non-negative integer column (sizes, counts, numbers).
    pub(crate) fn uint(&mut self, i: usize) -> Result<u64, DbError> {
        let n = self.int(i)?;
        u64::try_from(n).map_err(|_| DbError::Backend(format!("column {i}: negative value {n}")))
    }

    /// A state column, parsed by `parse`: a value it does not know is the
    /// database's fault (written by a newer satchel, or by hand).
    pub(crate) fn state<T>(
        &mut self,
        i: usize,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<T, DbError> {
        let s = self.text(i)?;
        parse(&s).ok_or_else(|| DbError::Backend(format!("unknown state {s:?} in column {i}")))
    }

    /// A boolean column (an integer on SQLite, a boolean on PostgreSQL).
    pub(crate) fn boolean(&mut self, i: usize) -> Result<bool, DbError> {
        Ok(self.int(i)? != 0)
    }
}

/// Which row lock [`Sql::lock`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// A pipeline: serializes run creation (the next run number).
    Pipeline,
    /// A run: serializes artifact creation and name claims in it.
    Run,
    /// An upload: serializes finishing and failing it.
    Upload,
    /// An artifact: holds its state while it is promoted.
    Artifact,
    /// A GitHub Actions upload in progress: serializes its blocks' cap.
    GhaUpload,
}

impl Lock {
    /// The table the lock is on.
    pub(crate) fn table(self) -> &'static str {
        match self {
            Lock::Pipeline => "pipelines",
            Lock::Run => "runs",
            Lock::Upload => "uploads",
            Lock::Artifact => "artifacts",
            Lock::GhaUpload => "gha_uploads",
        }
    }
}

/// A connection (inside a write transaction, for writes).
pub trait Sql {
    /// Runs a query and returns all its rows.
    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, DbError>;
    /// Runs a statement and returns how many rows it changed.
    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, DbError>;
    /// Locks row `id` of `lock`'s table until the transaction ends, so that
    /// check-then-write rules on it hold under concurrent transactions. On
    /// SQLite a write transaction already holds the whole database, so this
    /// is nothing there.
    fn lock(&mut self, lock: Lock, id: &str) -> Result<(), DbError>;
    /// Locks the `blobs` rows of `digests` (sorted), in digest order, so
    /// that a multi-row update of them cannot deadlock with another writer
    /// of blob rows, and returns the digests and sizes of the rows it
    /// locked. Nothing on SQLite, as [`Sql::lock`]: `None`.
    #[allow(clippy::type_complexity)]
    fn lock_blobs(&mut self, digests: &[&str]) -> Result<Option<Vec<(String, i64)>>, DbError>;
    /// Milliseconds since the epoch by the database's clock where several
    /// processes share the database (so that their times compare whatever
    /// their own clocks say); this process's clock otherwise.
    fn now_ms(&mut self) -> Result<i64, DbError> {
        Ok(satchel_model::id::now_millis())
    }
}

impl dyn Sql + '_ {
    /// The first row, if any.
    pub(crate) fn query_opt(&mut self, sql: &str, args: &[Value]) -> Result<Option<Row>, DbError> {
        Ok(self.query(sql, args)?.into_iter().next())
    }

    /// Exactly one row (an aggregate, or a row known to exist).
    pub(crate) fn query_one(&mut self, sql: &str, args: &[Value]) -> Result<Row, DbError> {
        self.query_opt(sql, args)?
            .ok_or_else(|| DbError::Backend(format!("no row for: {}", sql.trim())))
    }

    /// Whether the query returns a row.
    pub(crate) fn exists(&mut self, sql: &str, args: &[Value]) -> Result<bool, DbError> {
        Ok(!self.query(sql, args)?.is_empty())
    }
}

/// `?first, …`: placeholders for `n` values.
pub(crate) fn marks(n: usize, first: usize) -> String {
    (first..first + n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `sql` with `?N` parameters written `$N`, for PostgreSQL. The rules'
/// SQL has no `?` inside string literals.
pub(crate) fn dollar_params(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(|n| n.is_ascii_digit()) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollar_params_rewrites_numbered_parameters_only() {
        assert_eq!(
            dollar_params("SELECT a FROM t WHERE b = ?1 AND c IN (?2, ?10) AND d = '?'"),
            "SELECT a FROM t WHERE b = $1 AND c IN ($2, $10) AND d = '?'"
        );
    }

    #[test]
    fn row_accessors_check_types() {
        let mut r = Row(vec![
            Value::Text("a".into()),
            Value::Null,
            Value::Int(-1),
            Value::Int(1),
        ]);
        assert_eq!(r.text(0).unwrap(), "a");
        assert_eq!(r.opt_text(1).unwrap(), None);
        assert!(r.uint(2).is_err(), "a negative size is refused");
        assert!(r.boolean(3).unwrap());
        assert!(r.text(3).is_err(), "taken values are null");
    }
}
