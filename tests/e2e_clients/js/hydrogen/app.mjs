// The whole Hydrogen app (login, session, room list, room view, composer) from
// hydrogen-view-sdk, mounted as Hydrogen's own entry point does. The homeserver
// the login form starts with comes from ?homeserver= in the page's URL.
import { FeatureSet, Platform, RootViewModel, createNavigation, createRouter } from "hydrogen-view-sdk";

const homeserver = new URLSearchParams(location.search).get("homeserver");
const assetPaths = {
  downloadSandbox: "/sdk/asset-build/assets/download-sandbox.html",
  worker: "/sdk/asset-build/assets/main.js",
  olm: { wasm: "/olm/olm.wasm", legacyBundle: "/olm/olm_legacy.js", wasmBundle: "/olm/olm.js" },
  // Hydrogen 0.3.1 hands the access token to its service worker (authenticated media) and
  // fails at login without one. 127.0.0.1 counts as a secure origin, so it registers.
  serviceWorker: "/sw.js",
};

async function main() {
  const container = document.querySelector("#app");
  const platform = new Platform({ container, assetPaths, config: { defaultHomeServer: homeserver } });
  const navigation = createNavigation();
  platform.setNavigation(navigation);
  await platform.init();
  const urlRouter = createRouter({ navigation, history: platform.history });
  urlRouter.attach();
  const features = await FeatureSet.load(platform.settingsStorage);
  const vm = new RootViewModel({ platform, navigation, urlRouter, features });
  await vm.load();
  platform.createAndMountRootView(vm);
  window.lowbandAppMounted = true;
}

main().catch((err) => {
  window.lowbandAppError = String(err && err.stack ? err.stack : err);
  throw err;
});
