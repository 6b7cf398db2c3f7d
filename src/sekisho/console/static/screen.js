// Screen transfer page (画面転送): noVNC connected to the gateway's WebSocket, and the
// watermark. The gateway enforces what crosses (gateway/rfb.py); this page only shows.
import RFB from "./novnc/core/rfb.js";

const data = JSON.parse(document.getElementById("sekisho-screen").textContent);
const english = data.lang === "en";
const say = (ja, en) => (english ? en : ja);
const statusLine = document.getElementById("status");
const screen = document.getElementById("screen");
const passwordForm = document.getElementById("password");

function setStatus(state, text) {
  document.body.dataset.state = state;
  statusLine.textContent = text;
}

// -- watermark: user, route and the time in Asia/Tokyo, repeated diagonally over the screen.
const clock = new Intl.DateTimeFormat("ja-JP", {
  timeZone: "Asia/Tokyo", year: "numeric", month: "2-digit", day: "2-digit",
  hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
});
const watermark = document.getElementById("watermark");
const grid = document.createElement("div");
grid.className = "grid";
watermark.appendChild(grid);
const tiles = [];
for (let i = 0; i < 60; i++) {
  const tile = document.createElement("span");
  tile.className = "tile";
  grid.appendChild(tile);
  tiles.push(tile);
}
function stamp() {
  const text = `${data.user} · ${data.route} · ${clock.format(new Date())} JST`;
  for (const tile of tiles) tile.textContent = text;
  watermark.dataset.text = text;
}
stamp();
setInterval(stamp, 1000);

// -- the remote screen
if (!data.novnc) {
  setStatus("error", say("noVNC が見つかりません（scripts/assets を実行してください）",
                         "noVNC is missing (run scripts/assets)"));
} else {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const rfb = new RFB(screen, `${scheme}//${location.host}${data.ws_path}`);
  rfb.scaleViewport = true;
  rfb.background = "#1b1b1b";
  window.sekishoScreen = rfb;
  rfb.addEventListener("connect", () => {
    passwordForm.hidden = true;
    setStatus("connected", say("接続しました", "Connected"));
  });
  rfb.addEventListener("disconnect", (event) => {
    setStatus("disconnected", event.detail.clean
      ? say("切断されました（操作がない時間が続いた、またはアクセスが終了しました）",
            "Disconnected (idle for too long, or access ended)")
      : say("接続が切れました。再読み込みしてください。",
            "The connection was lost. Please reload."));
  });
  rfb.addEventListener("securityfailure", () => {
    setStatus("error", say("VNC の認証に失敗しました", "VNC authentication failed"));
  });
  rfb.addEventListener("credentialsrequired", () => {
    passwordForm.hidden = false;
    setStatus("credentials", say("VNC のパスワードを入力してください",
                                 "Enter the VNC password"));
    passwordForm.elements.password.focus();
  });
  passwordForm.addEventListener("submit", (event) => {
    event.preventDefault();
    rfb.sendCredentials({ password: passwordForm.elements.password.value });
    passwordForm.elements.password.value = "";
    passwordForm.hidden = true;
  });
}
