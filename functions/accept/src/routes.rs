//! The route table: what the handler serves, as `openapi.yaml` and `template.yaml` write it.

use lambda_http::http::Method;

pub const NEWSLETTERS_PATH: &str = "/newsletters";
/// A task: its status (`GET`), or its cancellation (`DELETE`); `{task_id}` is one path segment.
pub const TASK_PATH: &str = "/newsletters/{task_id}";
/// Pauses a task (`202`, its status).
pub const PAUSE_PATH: &str = "/newsletters/{task_id}/pause";
/// Resumes a paused task where it stopped (`202`, its status).
pub const RESUME_PATH: &str = "/newsletters/{task_id}/resume";
/// A test send to a few addresses (`202`, a task of its own).
pub const TEST_PATH: &str = "/newsletters/test";
/// The email a contact would get (`200`), rendered now.
pub const PREVIEW_PATH: &str = "/newsletters/preview";

/// Every route the handler serves: (method, path template). The router answers only these: any
/// other method on one of these paths is a 405 whose `Allow` this table gives.
/// `tests/routes.rs` checks that `openapi.yaml` and `template.yaml`'s HttpApi events list the same.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", NEWSLETTERS_PATH),
    ("GET", TASK_PATH),
    ("DELETE", TASK_PATH),
    ("POST", PAUSE_PATH),
    ("POST", RESUME_PATH),
    ("POST", TEST_PATH),
    ("POST", PREVIEW_PATH),
];

/// What a request asks for: one path template of [`ROUTES`], and what it captured.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    Newsletters,
    Task(&'a str),
    Pause(&'a str),
    Resume(&'a str),
    Test,
    Preview,
}

pub(crate) fn route(path: &str) -> Option<Route<'_>> {
    match path.strip_prefix(NEWSLETTERS_PATH)? {
        "" => Some(Route::Newsletters),
        rest => {
            let mut segments = rest.strip_prefix('/')?.split('/');
            let id = segments.next().filter(|id| !id.is_empty())?;
            let route = match segments.next() {
                // Not task ids (those are UUIDs): these two paths win over `{task_id}`.
                None if id == "test" => Route::Test,
                None if id == "preview" => Route::Preview,
                None => Route::Task(id),
                Some("pause") => Route::Pause(id),
                Some("resume") => Route::Resume(id),
                Some(_) => return None,
            };
            segments.next().is_none().then_some(route)
        }
    }
}

impl Route<'_> {
    fn template(&self) -> &'static str {
        match self {
            Route::Newsletters => NEWSLETTERS_PATH,
            Route::Task(_) => TASK_PATH,
            Route::Pause(_) => PAUSE_PATH,
            Route::Resume(_) => RESUME_PATH,
            Route::Test => TEST_PATH,
            Route::Preview => PREVIEW_PATH,
        }
    }

    fn methods(&self) -> impl Iterator<Item = &'static str> {
        let template = self.template();
        ROUTES
            .iter()
            .filter(move |(_, path)| *path == template)
            .map(|(method, _)| *method)
    }

    pub(crate) fn serves(&self, method: &Method) -> bool {
        self.methods().any(|served| served == method.as_str())
    }

    /// The `Allow` header of a 405 on this path.
    pub(crate) fn allow(&self) -> String {
        self.methods().collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path that `template` matches, with each `{parameter}` segment filled in.
    fn instance(template: &str) -> String {
        template
            .split('/')
            .map(|segment| {
                if segment.starts_with('{') {
                    "01a21247-9995-70f9-bc17-8ed0fa487837"
                } else {
                    segment
                }
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// The router and the table cannot drift apart: each entry is routed to its own template and
    /// served for its method. `App::handle` dispatches on the route, and on the method only
    /// for the task path: a second method on another path needs a case there.
    #[test]
    fn every_route_of_the_table_is_served() {
        for (method, template) in ROUTES {
            let path = instance(template);
            let routed = route(&path).unwrap_or_else(|| panic!("{path} is not routed"));
            assert_eq!(routed.template(), *template, "{path}");
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            assert!(routed.serves(&method), "{method} {template} is not served");
            let expected = if *template == TASK_PATH { 2 } else { 1 };
            assert_eq!(
                routed.methods().count(),
                expected,
                "App::handle dispatches {template} on the route alone: dispatch it on the method too"
            );
        }
    }

    #[test]
    fn allow_lists_the_table_methods_of_the_path() {
        assert_eq!(Route::Newsletters.allow(), "POST");
        assert_eq!(Route::Task("x").allow(), "GET, DELETE");
        assert!(!Route::Newsletters.serves(&Method::GET));
        assert!(!Route::Task("x").serves(&Method::HEAD));
        assert_eq!(Route::Pause("x").allow(), "POST");
        assert_eq!(Route::Resume("x").allow(), "POST");
        assert_eq!(Route::Test.allow(), "POST");
        assert_eq!(Route::Preview.allow(), "POST");
    }

    #[test]
    fn the_test_and_preview_paths_are_not_task_ids() {
        assert_eq!(route("/newsletters/test"), Some(Route::Test));
        assert_eq!(route("/newsletters/preview"), Some(Route::Preview));
        assert!(!Route::Test.serves(&Method::GET));
        assert_eq!(route("/newsletters/test/pause"), Some(Route::Pause("test")));
    }

    #[test]
    fn paths_outside_the_table_are_not_routed() {
        for path in [
            "/",
            "/newsletter",
            "/newsletters/",
            "/newsletters/a/b",
            "/newsletters/a/pause/",
            "/newsletters/a/resume/b",
            "/newsletters//pause",
            "/newslettersx",
        ] {
            assert_eq!(route(path), None, "{path}");
        }
    }
}
