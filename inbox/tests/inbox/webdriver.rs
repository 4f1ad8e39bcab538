//! WebDriver client (below).
