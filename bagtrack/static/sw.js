// The offline copy of the scanner and bill-loading pages: each is fetched from
// the network when it answers (and the copy refreshed), else the last copy is
// shown, so a reload in a dead zone still opens a page whose queued scans are
// sent once the network is back. Static files are named by their content
// (?v=hash), so a stored copy is never stale.
const PAGES = "bagtrack-pages";
const ASSETS = "bagtrack-assets";
const OFFLINE_PAGES = [/^\/scan$/, /^\/bills\/[^/]+$/];

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

async function pageFromNetwork(request, key) {
  const pages = await caches.open(PAGES);
  try {
    const response = await fetch(request);
    if (response.ok && !response.redirected) {
      await pages.put(key, response.clone());
    } else {
      // Logged out or gone: the copy must not outlive the session.
      await pages.delete(key);
    }
    return response;
  } catch (error) {
    const copy = await pages.match(key);
    if (copy) {
      return copy;
    }
    throw error;
  }
}

async function asset(request, url) {
  const assets = await caches.open(ASSETS);
  const copy = await assets.match(request);
  if (copy) {
    return copy;
  }
  const response = await fetch(request);
  if (response.ok) {
    for (const old of await assets.keys()) {
      if (new URL(old.url).pathname === url.pathname) {
        await assets.delete(old);
      }
    }
    await assets.put(request, response.clone());
  }
  return response;
}

self.addEventListener("fetch", (event) => {
  const request = event.request;
  const url = new URL(request.url);
  if (url.origin !== self.location.origin) {
    return;
  }
  if (request.method === "POST" && url.pathname === "/logout") {
    event.waitUntil(caches.delete(PAGES));
    return;
  }
  if (request.method !== "GET") {
    return;
  }
  if (url.pathname.startsWith("/static/") && url.searchParams.has("v")) {
    event.respondWith(asset(request, url));
  } else if (request.mode === "navigate" && OFFLINE_PAGES.some((page) => page.test(url.pathname))) {
    event.respondWith(pageFromNetwork(request, url.pathname));
  }
});
