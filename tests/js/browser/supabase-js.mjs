// "@supabase/supabase-js" in the page (its import map): the browser build's global, which
// index.html loads from node_modules (dist/umd/supabase.js, as a CDN would serve it).
export const { createClient } = globalThis.supabase;
