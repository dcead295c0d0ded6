//! A task's result as HTML: CommonMark (with tables, strikethrough and task lists), made safe
//! to put into the page. Agents write Markdown, but a result is untrusted text: raw HTML in it
//! is shown as text, links may only be web, mail or relative addresses, and images become links
//! (the page never fetches anything a result names).

use pulldown_cmark::{html, CowStr, Event, Options, Parser, Tag, TagEnd};

pub fn to_html(markdown: &str) -> String {
    let mut opts = Options::empty();
    opts.insert(Options::ENABLE_TABLES);
    opts.insert(Options::ENABLE_STRIKETHROUGH);
    opts.insert(Options::ENABLE_TASKLISTS);
    let events = Parser::new_ext(markdown, opts).map(|e| match e {
        Event::Html(s) | Event::InlineHtml(s) => Event::Text(s),
        Event::Start(Tag::Link {
            link_type,
            dest_url,
            title,
            id,
        })
        | Event::Start(Tag::Image {
            link_type,
            dest_url,
            title,
            id,
        }) => Event::Start(Tag::Link {
            link_type,
            dest_url: safe_url(dest_url),
            title,
            id,
        }),
        Event::End(TagEnd::Image) => Event::End(TagEnd::Link),
        other => other,
    });
    let mut out = String::with_capacity(markdown.len() * 3 / 2);
    html::push_html(&mut out, events);
    out
}

/// `url` when it is http(s), mailto or relative; otherwise a link to nowhere.
fn safe_url(url: CowStr<'_>) -> CowStr<'_> {
    let scheme_end = url.find([':', '/', '?', '#']);
    let has_scheme = scheme_end.is_some_and(|i| url[i..].starts_with(':'));
    if !has_scheme {
        return url;
    }
    let lower = url.to_ascii_lowercase();
    if ["http:", "https:", "mailto:"]
        .iter()
        .any(|s| lower.starts_with(s))
    {
        url
    } else {
        CowStr::Borrowed("#")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_becomes_html() {
        let h = to_html("# Done\n\n- **one**\n- `two`\n\n| a | b |\n|---|---|\n| 1 | 2 |\n");
        assert!(h.contains("<h1>Done</h1>"), "{h}");
        assert!(h.contains("<strong>one</strong>"), "{h}");
        assert!(h.contains("<code>two</code>"), "{h}");
        assert!(h.contains("<table>"), "{h}");
    }

    #[test]
    fn raw_html_is_shown_as_text() {
        let h = to_html("hi <script>alert(1)</script>\n\n<img src=x onerror=alert(1)>\n");
        assert!(!h.contains("<script"), "{h}");
        assert!(!h.contains("<img"), "{h}");
        assert!(h.contains("&lt;script&gt;"), "{h}");
    }

    #[test]
    fn only_safe_links_and_no_images() {
        let h = to_html("[a](javascript:alert(1)) [b](https://x.example/p) [c](docs/x.md) [d](JaVaScRiPt:x) ![e](https://t.example/pixel.png)");
        assert!(!h.to_ascii_lowercase().contains("javascript"), "{h}");
        assert!(h.contains(r#"href="https://x.example/p""#), "{h}");
        assert!(h.contains(r#"href="docs/x.md""#), "{h}");
        assert!(!h.contains("<img"), "{h}");
        assert!(h.contains(r#"href="https://t.example/pixel.png""#), "{h}");
    }
}
