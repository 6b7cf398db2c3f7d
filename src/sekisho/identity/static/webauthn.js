/* Sekisho passkeys: run navigator.credentials.create/get for the form on this page.
 *
 * The server renders the options (with its single-use challenge) into the form's
 * data-options attribute; this script converts them, asks the authenticator, puts the
 * answer (JSON) into the hidden "credential" field and submits the form. No framework,
 * no network request of its own, no inline script (the page's CSP allows only 'self').
 */
(function () {
  "use strict";

  function toBytes(text) {
    var b64 = text.replace(/-/g, "+").replace(/_/g, "/");
    while (b64.length % 4) { b64 += "="; }
    var raw = atob(b64), out = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) { out[i] = raw.charCodeAt(i); }
    return out.buffer;
  }

  function toText(buffer) {
    if (!buffer) { return null; }
    var bytes = new Uint8Array(buffer), raw = "";
    for (var i = 0; i < bytes.length; i++) { raw += String.fromCharCode(bytes[i]); }
    return btoa(raw).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function descriptors(list) {
    return (list || []).map(function (item) {
      return { type: item.type, id: toBytes(item.id), transports: item.transports };
    });
  }

  function creationOptions(json) {
    var options = Object.assign({}, json);
    options.challenge = toBytes(json.challenge);
    options.user = Object.assign({}, json.user, { id: toBytes(json.user.id) });
    options.excludeCredentials = descriptors(json.excludeCredentials);
    return options;
  }

  function requestOptions(json) {
    var options = Object.assign({}, json);
    options.challenge = toBytes(json.challenge);
    options.allowCredentials = descriptors(json.allowCredentials);
    return options;
  }

  function serialise(credential) {
    if (typeof credential.toJSON === "function") { return credential.toJSON(); }
    var response = credential.response, out = {
      id: credential.id, rawId: toText(credential.rawId), type: credential.type,
      clientExtensionResults: credential.getClientExtensionResults(), response: {
        clientDataJSON: toText(response.clientDataJSON)
      }
    };
    if (response.attestationObject) {
      out.response.attestationObject = toText(response.attestationObject);
      out.response.transports = response.getTransports ? response.getTransports() : [];
    } else {
      out.response.authenticatorData = toText(response.authenticatorData);
      out.response.signature = toText(response.signature);
      out.response.userHandle = toText(response.userHandle);
    }
    return out;
  }

  function start(form, error) {
    var options = JSON.parse(form.getAttribute("data-options"));
    var create = form.getAttribute("data-mode") === "create";
    error.hidden = true;
    var pending = create
      ? navigator.credentials.create({ publicKey: creationOptions(options) })
      : navigator.credentials.get({ publicKey: requestOptions(options) });
    pending.then(function (credential) {
      form.querySelector("input[name=credential]").value = JSON.stringify(serialise(credential));
      form.submit();
    }, function () {
      error.textContent = error.getAttribute("data-cancelled");
      error.hidden = false;
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("passkey-form");
    var button = document.getElementById("passkey-start");
    var error = document.getElementById("passkey-error");
    if (!form || !button || !error) { return; }
    if (!window.PublicKeyCredential || !navigator.credentials) {
      error.textContent = error.getAttribute("data-unsupported");
      error.hidden = false;
      button.disabled = true;
      return;
    }
    button.addEventListener("click", function () { start(form, error); });
  });
}());
