/*
 * gw_tls.c - the credentials of the gateway's listening port (see
 * gw_call.h).
 *
 * TLS when gw_config.tls_cert is set: the certificate chain and its key
 * (PEM files, each at most GW_PEM_MAX bytes) are read and checked here with
 * OpenSSL before gRPC sees them, so that an unreadable file, a file that is
 * not PEM, an encrypted key or a key that does not belong to the certificate
 * stops the start with a message naming the file (gRPC would only fail the
 * first handshake). With tls_client_ca, mutual TLS: a client must present a
 * certificate that chains to one of that file's CA certificates, or the
 * handshake fails.
 *
 * Plaintext otherwise, and only on a loopback address (127.0.0.0/8, ::1,
 * localhost, or a unix: socket) unless insecure_plaintext says that the
 * network in between is trusted (a sidecar or a load balancer that ends
 * TLS): tokens travel in the clear.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/grpc_security.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "gw_call.h"

#define GW_PEM_MAX (1u << 20) /* a PEM file: a chain is a few KiB */

/* Reads path into a NUL-terminated malloc'ed string; NULL with err
 * naming the flag (`what`) and the file. */
static char *s_read(const char *what, const char *path, char *err, size_t errlen)
{
    char *p, msg[512];
    size_t n;
    if (im_read_file(path, GW_PEM_MAX, &p, &n, msg, sizeof msg)) {
        snprintf(err, errlen, "%s %s", what, msg);
        return NULL;
    }
    return p;
}

/* OpenSSL's passphrase callback: an encrypted key is refused, never asked
 * for on the terminal. */
static int s_no_pass(char *buf, int size, int rw, void *u)
{
    (void)buf, (void)size, (void)rw, (void)u;
    return 0;
}

/* Checks the PEM texts: a certificate, a key that matches it, and (when
 * ca) at least one CA certificate. 0, or -1 with err. */
static int s_check(const gw_config *c, const char *cert, const char *key, const char *ca,
                   char *err, size_t errlen)
{
    int rc = -1;
    BIO *b = BIO_new_mem_buf(cert, -1);
    X509 *x = b ? PEM_read_bio_X509(b, NULL, s_no_pass, NULL) : NULL;
    BIO_free(b);
    b = BIO_new_mem_buf(key, -1);
    EVP_PKEY *k = b ? PEM_read_bio_PrivateKey(b, NULL, s_no_pass, NULL) : NULL;
    BIO_free(b);
    X509 *a = NULL;
    if (ca) {
        b = BIO_new_mem_buf(ca, -1);
        a = b ? PEM_read_bio_X509(b, NULL, s_no_pass, NULL) : NULL;
        BIO_free(b);
    }
    if (!x)
        snprintf(err, errlen, "--tls-cert %s: no PEM certificate in it", c->tls_cert);
    else if (!k)
        snprintf(err, errlen, "--tls-key %s: no PEM private key in it (or it is encrypted)",
                 c->tls_key);
    else if (X509_check_private_key(x, k) != 1)
        snprintf(err, errlen, "--tls-key %s does not match the certificate of --tls-cert %s",
                 c->tls_key, c->tls_cert);
    else if (ca && !a)
        snprintf(err, errlen, "--tls-client-ca %s: no PEM certificate in it",
                 c->tls_client_ca);
    else
        rc = 0;
    ERR_clear_error();
    X509_free(x);
    X509_free(a);
    EVP_PKEY_free(k);
    return rc;
}

/* Whether HOST:PORT (or [HOST]:PORT, or unix:PATH) is on this host only. */
static bool s_loopback(const char *listen)
{
    if (!strncmp(listen, "unix:", 5) || !strncmp(listen, "unix-abstract:", 14))
        return true;
    char host[256];
    const char *colon = strrchr(listen, ':');
    size_t n = colon ? (size_t)(colon - listen) : strlen(listen);
    if (n >= 2 && listen[0] == '[' && listen[n - 1] == ']') {
        listen++;
        n -= 2;
    }
    if (n == 0 || n >= sizeof host)
        return false; /* ":PORT" is every interface */
    memcpy(host, listen, n);
    host[n] = 0;
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, host, &a6) == 1)
        return IN6_IS_ADDR_LOOPBACK(&a6);
    return !strcmp(host, "localhost");
}

grpc_server_credentials *gw__listen_creds(const gw_config *c, char *err, size_t errlen)
{
    bool tls = c->tls_cert && *c->tls_cert;
    if (!tls) {
        if ((c->tls_key && *c->tls_key) || (c->tls_client_ca && *c->tls_client_ca)) {
            snprintf(err, errlen, "--tls-key and --tls-client-ca need --tls-cert");
            return NULL;
        }
        if (!c->insecure_plaintext && !s_loopback(c->listen)) {
            snprintf(err, errlen,
                     "refusing plaintext gRPC on %s, which is not a loopback address: "
                     "give --tls-cert and --tls-key, or --insecure-plaintext if the network "
                     "in between is trusted", c->listen);
            return NULL;
        }
        return grpc_insecure_server_credentials_create();
    }
    if (!c->tls_key || !*c->tls_key) {
        snprintf(err, errlen, "--tls-cert needs --tls-key");
        return NULL;
    }
    bool mtls = c->tls_client_ca && *c->tls_client_ca;
    char *cert = s_read("--tls-cert", c->tls_cert, err, errlen);
    char *key = cert ? s_read("--tls-key", c->tls_key, err, errlen) : NULL;
    char *ca = key && mtls ? s_read("--tls-client-ca", c->tls_client_ca, err, errlen) : NULL;
    grpc_server_credentials *creds = NULL;
    if (key && (!mtls || ca) && !s_check(c, cert, key, ca, err, errlen)) {
        grpc_ssl_pem_key_cert_pair pair = {.private_key = key, .cert_chain = cert};
        creds = grpc_ssl_server_credentials_create_ex(
            ca, &pair, 1,
            mtls ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                 : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE,
            NULL);
        if (!creds)
            snprintf(err, errlen, "gRPC refused the TLS certificate or key");
    }
    /* gRPC keeps its own copies */
    free(cert);
    if (key) {
        memset(key, 0, strlen(key));
        free(key);
    }
    free(ca);
    return creds;
}
